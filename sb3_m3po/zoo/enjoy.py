"""Run a trained agent with rl-zoo3's ``enjoy``, M3PO registered: ``python -m sb3_m3po.zoo.enjoy --algo m3po --env ...``."""

import sys

from sb3_m3po.zoo import register


def main(argv: list[str] | None = None) -> None:
    register()
    from rl_zoo3.enjoy import enjoy

    sys.argv = ["sb3_m3po.zoo.enjoy", *(sys.argv[1:] if argv is None else argv)]
    enjoy()


if __name__ == "__main__":
    main()
