#!/bin/sh
# pure shell spin loop, pinned to CPU 0 by init: always runnable (state R), no children
while :; do :; done
