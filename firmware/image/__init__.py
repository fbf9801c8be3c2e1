"""firmware.image — the SD-card image recipe (`make image`); see firmware/README.md."""
