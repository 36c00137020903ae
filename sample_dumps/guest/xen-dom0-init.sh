#!/bin/sh
# dom0 init of the Xen samples (busybox sh; xen.py fills in the @-delimited names).
# Starts the toolstack (xenstored, xen-init-dom0, xenconsoled logging the guest's
# console), creates the guest @NAME@, dumps it with `xl dump-core` once its init has
# reported "KVMCORE ready" (paused for the dump), lets it crash, dumps it again (an HVM
# guest: only once it has panicked), and writes the files as a tar stream onto the
# virtio disk /dev/vda. Progress lines start with "KVMXEN" (on Xen's serial console,
# where the host watches them).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin:/usr/lib/xen-@XEN_SERIES@/bin
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm

say() { echo "KVMXEN $*"; }
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(up)" 'BEGIN { printf "%.1f", b - a }'; }
MODE=@MODE@  # pv: dumps of the running and the crashed guest; hvm: of the crashed one
OUT=/out
LOG=@GUEST_LOG@  # the guest's console: xenconsoled's log (pv), its serial port (hvm)
fail() {
	say "failed: $*"
	for f in $LOG /var/log/xen/xl-@NAME@.log /var/log/xen/qemu-dm-@NAME@.log; do
		[ -e $f ] && { echo "--- $f"; tail -n 60 $f; }
	done
	xl list 2>&1
	poweroff -f
	sleep 100000
}
say "dom0 init at $(up)"

for m in $(cat /etc/modules.order); do
	insmod /lib/modules/$m || fail "insmod $m"
done
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen || fail "mount xenfs"
mkdir -p /var/run/xen /var/run/xenstored /var/lib/xen /var/lib/xenstored \
	/var/log/xen/console /var/lock $OUT
xenstored --pid-file /var/run/xenstored.pid || fail xenstored
xen-init-dom0 || fail xen-init-dom0
xenconsoled --log=guest --log-dir=/var/log/xen/console \
	--pid-file=/var/run/xenconsoled.pid || fail xenconsoled
say "toolstack up at $(up)"
xl info > $OUT/xl-info.txt 2>&1 || fail "xl info"

# state: the state column of `xl list` (r, b, p, s, c, d flags)
state() { xl list @NAME@ 2>/dev/null | awk 'NR == 2 { print $5 }'; }
# wait_log PATTERN SECONDS: until the guest's console log holds PATTERN; every 30 s
# the guest's state and last console line
wait_log() {
	i=0
	while ! grep -q "$1" $LOG 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt $(($2 * 5)) ] && return 1
		[ $((i % 150)) -eq 0 ] && say "waiting for $1: state $(state), guest: $(tail -n 1 $LOG 2>/dev/null | cut -c1-150)"
		sleep 0.2
	done
}

t=$(up)
xl create /etc/xen/@NAME@.cfg || fail "xl create"
say "guest created at $(up)"

if [ "$MODE" = hvm ]; then
	# an HVM guest without its PV drivers (xen_nopv) does not report its panic to
	# Xen: pause it once its serial log shows the end of the panic, then dump it
	wait_log "end Kernel panic" @READY_TIMEOUT@ || fail "the guest did not panic"
	say "guest panicked at $(up) ($(since $t) s after xl create)"
	xl pause @NAME@ || fail "xl pause"
	say "guest paused: state $(state)"
	t=$(up)
	xl dump-core @NAME@ $OUT/xen-core || fail "xl dump-core (crashed)"
	say "dump-core crashed seconds=$(since $t)"
else
	wait_log "KVMCORE ready" @READY_TIMEOUT@ || fail "the guest did not report KVMCORE ready"
	say "guest ready at $(up) ($(since $t) s after xl create)"
	# let init reach its read of the console before the guest is paused
	sleep 1
	xl pause @NAME@ || fail "xl pause"
	say "guest paused: state $(state)"
	t=$(up)
	xl dump-core @NAME@ $OUT/xen-core-live || fail "xl dump-core (live)"
	say "dump-core live seconds=$(since $t)"
	xl unpause @NAME@ || fail "xl unpause"

	# the guest's init reads "go" from its console: write it to the console's pty
	domid=$(xl domid @NAME@)
	tty=$(xenstore-read /local/domain/$domid/console/tty) || fail "no console tty in xenstore"
	echo go > $tty
	t=$(up)
	i=0
	while :; do
		s=$(state)
		case "$s" in *c*) break ;; esac
		i=$((i + 1))
		[ $i -gt $((@CRASH_TIMEOUT@ * 5)) ] && fail "the guest did not crash (state $s)"
		sleep 0.2
	done
	say "guest crashed: state $s ($(since $t) s after go)"
	t=$(up)
	xl dump-core @NAME@ $OUT/xen-core || fail "xl dump-core (crashed)"
	say "dump-core crashed seconds=$(since $t)"
fi

xl list -v > $OUT/xl-list.txt 2>&1
cp $LOG $OUT/guest-console.log
[ "$MODE" = hvm ] && cp /var/log/xen/qemu-dm-@NAME@.log $OUT/qemu-dm.log
xl destroy @NAME@
ls -l $OUT
tar -C $OUT -cf /dev/vda . || fail "tar to /dev/vda"
sync
say "done at $(up)"
poweroff -f
sleep 100000
