"""Print the configured restoration network's summary, parameter count and FLOPs per slice (no training).

    python model.py                                           # the default residual U-Net
    python model.py --config configs/thesis.yaml              # the 2021 thesis autoencoder

The networks themselves: breastmri/restore/networks.py.
"""

import argparse
import sys

from breastmri.runtime import add_verbose_flag, quiet_start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: the defaults in breastmri/config.py)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set model.name=thesis_autoencoder (repeatable)")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    from breastmri.config import ConfigError, load_config
    from breastmri.restore.networks import (
        check_input_size,
        count_flops,
        get_model,
        size_multiple,
    )

    try:
        config = load_config(args.config, args.set)
        net = get_model(config)
    except (ConfigError, ValueError) as error:  # as main.py says it: one line, exit status 2
        print(f"config error: {error}", file=sys.stderr)
        sys.exit(2)
    net.summary()
    side = config["preprocess"]["image_size"] or 512  # null: arrays keep the scanner's matrix; quote a 512^2 slice
    check_input_size(config, side, side)
    flops = count_flops(net, side, side)
    print(f"{net.name}: {net.count_params():,} parameters; {flops / 1e9:.2f} GFLOPs per {side}x{side} slice "
          f"(2 x conv multiply-adds); input sides must be multiples of {size_multiple(config)}")


if __name__ == "__main__":
    quiet_start()
    main()
