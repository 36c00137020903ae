#!/bin/sh
# started by init as `taskset -c 1 /bin/crasher`
echo "KVMCORE panicker pid=$$ ppid=$PPID cpu=1 comm=crasher"
echo c > /proc/sysrq-trigger
