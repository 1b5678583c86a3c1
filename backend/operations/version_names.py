"""What a model version name may be, and the variable that pins one.

A version name is a folder name under ``MODEL_DIR/versions`` and the ``model_version`` Label Studio shows;
``CORES_MODEL_VERSION`` pins one. The settings check the variable against this rule when they are read,
the version store (``backend.versions.store``) checks every name it is given.
"""

from __future__ import annotations

import re

POINTER_FILE = "current"
"""The pointer file naming the version served to every project (``MODEL_DIR/versions/current``)."""
PROJECTS_DIR = "projects"
"""The folder of per-project pointers (``MODEL_DIR/versions/projects/<id>``)."""
PIN_ENV = "CORES_MODEL_VERSION"
"""Environment variable that pins the served version (a name from ``versions list``)."""
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""What a version name may look like: it is a folder name and Label Studio's ``model_version``."""
RESERVED_NAMES = frozenset({POINTER_FILE, PROJECTS_DIR})
"""Names under ``MODEL_DIR/versions`` that are not versions."""


class VersionError(ValueError):
    """A version name that does not exist or cannot be used; the message says which ones do."""


def check_name(name: str, what: str = "version name") -> str:
    """``name`` if it is a usable version name (see ``NAME_PATTERN``).

    Raises:
        VersionError: an empty, reserved or unsafe name.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in RESERVED_NAMES:
        raise VersionError(
            f"{what} {name!r} is not usable: expected letters, digits, '.', '_' or '-' (at most 128, "
            f"not starting with '.', '_' or '-'), and not {sorted(RESERVED_NAMES)}"
        )
    return name
