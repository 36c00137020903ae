#!/bin/sh
# a sleeper: one child `sleep 100000`; the script itself blocks in `wait`
sleep 100000 &
child=$!
while :; do
	c=
	read c < /proc/$child/comm
	[ "$c" = sleep ] && break
done
echo "KVMCORE pid=$child ppid=$$ comm=sleep"
: > /tmp/ready.@NAME@
wait
