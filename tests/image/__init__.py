"""Tests of the real SD-card image (`make image-test`); skipped without MTA_LITE_IMAGE."""
