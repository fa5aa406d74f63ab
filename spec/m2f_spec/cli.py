"""`m2f validate -e spec.yaml [overrides]` (prints the resolved spec) and `m2f schema` (prints its JSON Schema)."""

from __future__ import annotations

import json

from m2f_spec.args import parse_task_args
from m2f_spec.errors import UserError
from m2f_spec.jsonschema import DRAFT_07, OPENAPI, json_schema
from m2f_spec.loader import dump_yaml

# m2f_trainer.cli passes the command name first: this module serves two commands.
MULTI_COMMAND = True


def _validate(argv: list[str]) -> int:
    cfg, _ = parse_task_args(argv, prog="m2f validate")
    print(dump_yaml(cfg), end="")
    return 0


def _schema(argv: list[str]) -> int:
    flavor = OPENAPI
    for arg in argv:
        if arg == "--draft-07":
            flavor = DRAFT_07
        elif arg == "--openapi":
            flavor = OPENAPI
        elif arg in ("-h", "--help"):
            print("usage: m2f schema [--openapi | --draft-07]\n\n"
                  "Print the experiment spec's JSON Schema: --openapi (default) is the form a Kubernetes\n"
                  "CRD embeds (nullable, no $ref); --draft-07 is plain JSON Schema for generic validators.")
            return 0
        else:
            raise UserError(f"m2f schema: unknown argument {arg!r}; use --openapi or --draft-07")
    print(json.dumps(json_schema(flavor), indent=2))
    return 0


def main(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "validate":
        return _validate(rest)
    if command == "schema":
        return _schema(rest)
    raise UserError(f"m2f_spec.cli serves validate and schema, not {command!r}")
