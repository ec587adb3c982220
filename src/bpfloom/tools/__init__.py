"""Ready tools built on the runtime: each a library class (their commands are in
``bpfloom.cli``). ``tool`` holds what they share."""
