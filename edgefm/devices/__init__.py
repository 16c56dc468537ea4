"""Run edgefm on boards from the workstation over SSH: an inventory of devices (``devices.yaml``), a probe,
content-addressed bundle pushes, and remote ``bench`` / ``verify`` / ``compile`` whose results come back here.

Only edgefm's own commands run on a device (``python -m edgefm.devices.agent|probe``, ``python -m edgefm.cli``);
``edgefm devices setup`` is the one exception (it creates the venv those commands run in)."""
