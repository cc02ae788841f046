"""Entry point: `python main.py strategy=fedu dataset=cifar100 num_clients=5 [key=value ...]`.

Composes the config (conf/) once, refuses bad input before any training, and runs the command
its `mode` names (app/commands.py): train (a federation in Flower's simulation engine; `resume=`
continues one), evaluate a checkpoint, route an SDR checkpoint, export a checkpoint's learned
network, predict with a detector on a folder, or embed images (docs/using_the_model.md). `-m` runs every combination
of comma-separated values; `--cfg` prints the composed config; `--help` the choices.
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: python main.py [key=value ...]            train (default: strategy=fedu dataset=cifar100, the paper's protocol)
       python main.py resume=<run dir>             continue an interrupted run
       python main.py mode=evaluate checkpoint=<run>/checkpoint_final.pt|init
       python main.py mode=route checkpoint=<sdr run>/checkpoint_final.pt dataset=<downstream>
       python main.py mode=export checkpoint=<run>/checkpoint_final.pt [output_dir=<folder>]
       python main.py mode=predict checkpoint=<detection run>/checkpoint_final.pt images=<folder>
       python main.py mode=embed checkpoint=<run>/checkpoint_final.pt images=<folder or .npz> [embed.query=<i>]
       python main.py -m key=a,b ...               one run per combination
       python main.py --cfg [key=value ...]        print the composed config
"""


def usage() -> str:
    from app.config import GROUPS, group_options

    return USAGE + "\nconfig groups (conf/):\n" + "\n".join(f"  {g}: {', '.join(group_options(g))}" for g in GROUPS)


def main(argv: list[str]) -> None:
    from app.commands import USER_ERRORS, multirun, run_command

    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    if "--cfg" in flags and overrides[:1] in (["job"], ["all"]):  # Hydra's `--cfg job` spelling
        overrides = overrides[1:]
    try:
        if "--cfg" in flags:
            from omegaconf import OmegaConf

            from app.config import compose, to_plain

            print(OmegaConf.to_yaml(to_plain(compose(overrides))))
        elif set(flags) - {"-m", "--multirun"}:
            sys.exit(f"error: unknown option {sorted(set(flags) - {'-m', '--multirun'})}\n{usage()}")
        elif flags:
            multirun(overrides)
        else:
            run_command(overrides)
    except USER_ERRORS as err:
        code = getattr(err, "exit_code", None)
        if code is None:
            sys.exit(f"error: {err}")
        print(f"error: {err}", file=sys.stderr, flush=True)  # stopped by a signal: the shell's 128 + signal
        sys.stdout.flush()
        os._exit(code)  # not through Ray's exit, which aborts a process stopped with its actors alive


if __name__ == "__main__":
    main(sys.argv[1:])
