"""The model's parts: the language model, the CLIP tower's config and pixels, the projector and seg head,
SAM and its prompt encoder, the token refiner, the tokenizer and prompts, the config and the builders.

``CoresModel`` (``model``) receives finished sub-modules (unmodified transformers LLaMA and CLIP, pip
segment-anything's ``Sam``) and holds the chain's steps; ``build`` makes one from a ``CoresConfig``
(``config``) and a SAM geometry (``sam``). The text side reproduces the trained stack: ``llama_tokenizer``
(transformers 4.31's slow tokenizer on sentencepiece), ``tokenizer_files``, ``tokenizer`` (the image slot and
chain tokens), ``prompts`` (the conversation strings, as data), ``queries`` (what a query may hold).
``prompts`` and ``queries`` are torch-free: the web process may use them.

May import: cores.errors
"""
