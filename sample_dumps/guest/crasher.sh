#!/bin/sh
# started by init as `taskset -c 1 /bin/crasher`
echo "KVMCORE panicker pid=$$ ppid=$PPID cpu=1 comm=crasher"
# let the console drain: the serial driver sends the tty's buffer from interrupts,
# and a panic right after the echo can lose the line (seen on riscv64's 8250)
sleep 1
echo c > /proc/sysrq-trigger
