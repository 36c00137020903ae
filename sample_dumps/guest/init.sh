#!/bin/sh
# kvmcore sample guest init (busybox sh).  @VAR@ placeholders are filled by initramfs.py.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /etc/modules.order); do
	insmod /lib/modules/$m || echo "KVMCORE insmod-failed $m"
done
# ground truth for `mods`: /proc/modules (name size refcount deps state address)
while read -r name size refs deps state addr rest; do
	echo "KVMCORE module name=$name size=$size refs=$refs state=$state addr=$addr"
done < /proc/modules

if [ -e /proc/vmcore ]; then
	# kdump capture kernel: copy the old kernel's memory image to the virtio disk
	echo "KVMCORE capture vmcore-size=$(stat -c %s /proc/vmcore)"
	dd if=/proc/vmcore of=/dev/vda bs=1M conv=fsync 2>&1
	echo "KVMCORE capture-done rc=$?"
	sync
	echo o > /proc/sysrq-trigger
	sleep 100000
fi

echo "KVMCORE uts.sysname=$(uname -s)"
echo "KVMCORE uts.release=$(uname -r)"
echo "KVMCORE uts.version=$(uname -v)"
echo "KVMCORE uts.machine=$(uname -m)"

@KEXEC@

# wait until /proc/PID/comm reads COMM (the child has exec'd), at most ~30 s
wait_comm() {
	i=0
	while :; do
		c=
		read c < /proc/$1/comm
		[ "$c" = "$2" ] && return 0
		i=$((i + 1))
		[ $i -gt 3000 ] && { echo "KVMCORE wait-failed pid=$1 comm=$2 got=$c"; return 1; }
		sleep 0.01
	done
}

echo "KVMCORE pid=$$ ppid=0 comm=init"
for s in sleeper_a sleeper_b sleeper_c; do
	/bin/$s &
	echo "KVMCORE pid=$! ppid=$$ comm=$s"
	wait_comm $! $s
done
taskset -c 0 /bin/busyloop_task &
echo "KVMCORE pid=$! ppid=$$ comm=busyloop_task"
wait_comm $! busyloop_task
/bin/threaded_task @NTHREADS@ /tmp/ready.threaded_task &
echo "KVMCORE pid=$! ppid=$$ comm=threaded_task"
wait_comm $! threaded_task
for f in sleeper_a sleeper_b sleeper_c threaded_task; do
	i=0
	while [ ! -e /tmp/ready.$f ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
done
@EXTRA_TASKS@

# ground truth for the exploration commands (files, mount, net, kmem -i, log -T)
ip link set lo up
# a helper holding known fds: a pipe (0), files (3, 4), a FIFO (5), a TCP socket (listening)
mkfifo /tmp/kvmcore.fifo
echo kvmcore > /tmp/kvmcore.in
sleep 100000 | nc -l -p 7777 3</tmp/kvmcore.in 4>/tmp/kvmcore.out 5<>/tmp/kvmcore.fifo &
fdpid=$!
echo "KVMCORE pid=$fdpid ppid=$$ comm=nc"
wait_comm $fdpid nc
i=0
while ! ls -l /proc/$fdpid/fd | grep -q socket: && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
for f in /proc/$fdpid/fd/*; do
	echo "KVMCORE fd pid=$fdpid fd=${f##*/} target=$(readlink $f)"
done
while read -r dev dir type rest; do
	echo "KVMCORE mount dev=$dev dir=$dir type=$type"
done < /proc/mounts
for n in /sys/class/net/*; do
	n=${n##*/}
	echo "KVMCORE netdev name=$n flags=$(cat /sys/class/net/$n/flags) mtu=$(cat /sys/class/net/$n/mtu) mac=$(cat /sys/class/net/$n/address)"
	ip -o -4 addr show dev $n | while read -r idx name fam addr rest; do
		echo "KVMCORE netaddr name=$n family=$fam addr=$addr"
	done
done
for k in MemTotal MemFree Buffers Cached; do
	echo "KVMCORE meminfo.$k=$(grep "^$k:" /proc/meminfo | tr -s ' ' | cut -d' ' -f2)"
done
read up rest < /proc/uptime
echo "KVMCORE clock date=$(date +%s) uptime=$up"

echo "KVMCORE marker=@MARKER@"
echo "@MARKER@" > /dev/kmsg
echo "KVMCORE ready"
@BEFORE_CRASH@
taskset -c 1 /bin/crasher
echo "KVMCORE crasher-returned"
sleep 100000
