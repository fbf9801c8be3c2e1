"""flash — mta-lite-flash: write the box's SD-card image to a card, safely, verified, provisioned.

    image.py       the image as one stream of bytes (.img, .xz, .gz, .zst), never unpacked to disk
    bmap.py        bmaptool's block map: which blocks hold data, and their checksums
    devices.py     what a device is (sysfs, mount table) and the guards that refuse it
    writer.py      write the mapped ranges, first sector last; read them back and compare
    bootconfig.py  the MBR's first FAT partition; mta-lite.toml put there with mtools
    progress.py    the progress bars (tqdm), only on a terminal
    cli.py         the command line, the order of the steps, exit statuses

See docs/flash.md for what a user sees.
"""
