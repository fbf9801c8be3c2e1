"""mta_lite_tools — the programs an owner runs on their own computer, not on the box.

    flash/      mta-lite-flash: write the SD-card image to a card, verified and provisioned

Guarantees: these tools may use the relay's code (its config validator); the relay and the
board package never import them, so nothing here can change how the box handles mail.
"""
