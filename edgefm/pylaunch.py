"""How edgefm starts another Python like the one it runs in (the bench worker, the device agent's ``edgefm``).

Normally that is ``sys.executable``. Under an emulator it is not: with qemu user-mode emulation and no
binfmt_misc handler, ``sys.executable`` is an arm64 ELF that the kernel cannot exec, so a child must be started
through the same launcher (``qemu-aarch64-static -cpu cortex-a76 -L ROOT ROOT/usr/bin/python3.11``). Whoever
starts such a Python says so in ``$EDGEFM_PYTHON``; the environment is inherited, so grandchildren get it too.
"""

from __future__ import annotations

import os
import shlex
import sys

from edgefm.errors import ConfigError

ENV = "EDGEFM_PYTHON"


def python_command() -> list[str]:
    """The argv prefix that starts a Python like this one: ``$EDGEFM_PYTHON`` split as a shell would (a
    launcher and its arguments), else ``[sys.executable]``."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return [sys.executable]
    try:
        argv = shlex.split(spec)
    except ValueError as e:
        raise ConfigError(f"${ENV}={spec!r} is not a valid command line ({e}); give a Python executable, or a "
                          f"launcher and its arguments ending with one") from None
    return argv
