"""support — what the tests share: the real daemon (relay), real peers (peers: Postfix,
smtp-sink, swaks; recorder: an aiosmtpd smarthost; dns: dnsmasq; stick: FAT images; flash:
card images and loop devices), the fault harness (faults), the dialog runner (dialogs), the
queue manager's in-process harness (qmgr), and memgrep, which reads a live process's memory."""
