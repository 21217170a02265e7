"""The round core, pure: a federation's admission, close rule and parent exchange, and the
sequence of a round returned as steps for a shell to carry out. No I/O, no clock, no training."""
