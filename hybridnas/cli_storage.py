"""Which database a command uses: the one home of the ``--storage`` precedence.

1. ``--storage URL`` (for ``launch``, also ``--set storage=URL``);
2. the ``HYBRIDNAS_STORAGE`` environment variable;
3. for ``launch``, the study file's own ``storage`` key;
4. :data:`DEFAULT_STORAGE`.

Light on purpose (no pydantic model, no torch): ``studies``, ``query`` and the other readers
import it, and ``hybridnas.studies.config`` takes its default from here.
"""

from __future__ import annotations

import os

__all__ = ["DEFAULT_STORAGE", "STORAGE_ENV", "storage_override", "storage_url"]

DEFAULT_STORAGE = "sqlite:///hybridnas.db"
STORAGE_ENV = "HYBRIDNAS_STORAGE"


def storage_override(flag: str | None, *, set_on_command_line: bool = False) -> str | None:
    """The URL that beats a study file's ``storage`` key: ``--storage`` as given (an empty
    one stays empty, to be refused by the store, not replaced), else a non-empty
    ``HYBRIDNAS_STORAGE`` (an empty variable is unset, as in shells), else None. With
    ``set_on_command_line`` (``launch --set storage=URL``) the variable is not read: the
    ``--set`` value, applied to the study file, is a command-line flag too."""
    if flag is not None:
        return flag
    if set_on_command_line:
        return None
    return os.environ.get(STORAGE_ENV) or None


def storage_url(flag: str | None) -> str:
    """The database of a command that reads no study file: :func:`storage_override`, else
    :data:`DEFAULT_STORAGE`."""
    override = storage_override(flag)
    return DEFAULT_STORAGE if override is None else override
