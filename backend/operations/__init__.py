"""What every process shares to run and be observed: settings from the environment (``settings``, with
``level_labels`` and ``version_names``; the worker's model fast paths in ``fast_path_settings``), logging
(``logs``), the Redis client (``redis_client``), metrics counters in Redis (``metrics``), the one id parser
(``ids``) and what command lines share (``command_line``).

May import: backend.images
"""
