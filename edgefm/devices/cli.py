"""``edgefm devices``: list and probe the boards of the inventory; ``edgefm devices setup NAME`` installs the
torch-free edgefm core on one. Also the helpers edgefm/cli.py uses for ``--device/--fleet``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, invoke_without_command=True,
                  help="Boards edgefm drives over SSH (devices.yaml): list, probe, set up.")
console = Console(stderr=True)
out = Console()

INVENTORY_HELP = "Device inventory YAML (default: $EDGEFM_DEVICES, ./devices.yaml, ~/.config/edgefm/devices.yaml)"


def selected(inventory: Optional[Path], names: Optional[List[str]], fleet: bool):
    """(inventory, devices) for --device/--fleet."""
    from edgefm.devices.inventory import load_inventory

    inv = load_inventory(inventory)
    return inv, inv.select(names, fleet)


@app.callback()
def devices(ctx: typer.Context,
            inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help=INVENTORY_HELP),
            no_probe: bool = typer.Option(False, "--no-probe", help="List the inventory without connecting"),
            verbose: bool = typer.Option(False, "--verbose", "-v")):
    """List the inventory's devices and probe each over SSH (reachable? versions, CPU/GPU, power, disk)."""
    from edgefm.cli import handles_errors

    if ctx.invoked_subcommand is not None:
        ctx.obj = {"inventory": inventory}
        return
    handles_errors(_list)(inventory=inventory, no_probe=no_probe, verbose=verbose)


def _list(inventory: Optional[Path], no_probe: bool, verbose: bool) -> None:
    from rich.table import Table

    from edgefm.devices import fleet

    inv, devs = selected(inventory, None, True)
    t = Table(title=f"devices ({inv.path})")
    for c in ("device", "host", "target", "status"):
        t.add_column(c, no_wrap=True)
    t.add_column("detail")
    if no_probe:
        for d in devs:
            t.add_row(d.name, d.host, d.target or "", "-", f"python {d.python}, workdir {d.workdir}")
        out.print(t)
        return
    outs = fleet.probe_all(inv, devs)
    for d, o in zip(devs, outs):
        row = fleet.summary_row(d, o)
        status = "[green]ok[/]" if o.ok else "[red]FAILED[/]"
        t.add_row(row["device"], row["host"], row["target"], status, row["detail"])
    out.print(t)
    if fleet.failed_count(outs):
        raise typer.Exit(1)


@app.command()
def setup(ctx: typer.Context, name: str = typer.Argument(..., help="Device name from the inventory"),
          inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help=INVENTORY_HELP),
          wheel: Optional[Path] = typer.Option(None, "--wheel", help="edgefm wheel to install (default: built from "
                                                                     "this checkout)"),
          verbose: bool = typer.Option(False, "--verbose", "-v")):
    """Install edgefm's torch-free core on the device into a venv of its own, from wheels this machine pushes
    (the device needs no internet)."""
    from edgefm.cli import handles_errors

    handles_errors(_setup)(inventory=inventory or (ctx.obj or {}).get("inventory"), name=name, wheel=wheel,
                           verbose=verbose)


def _setup(inventory: Optional[Path], name: str, wheel: Optional[Path], verbose: bool) -> None:
    from edgefm.devices import bootstrap

    inv, devs = selected(inventory, [name], False)
    python = bootstrap.setup(inv, devs[0], progress=lambda m: console.log(m), wheel=wheel)
    out.print(f"edgefm installed on {name}: set python: {python} for it in {inv.path}")
