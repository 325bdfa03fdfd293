#!/bin/bash
# `bash bench/sustained-load.sh` (SECS=300 by default; DIR and FLOTILLA may be set): a 3-node
# cluster on loopback under puts from 64 clients, each node's peak RSS, then SIGKILL of all
# three and the time until the restarted cluster answers a linearizable read (BENCHMARKS.md).
F=${FLOTILLA:-$(dirname "$0")/../target/release/flotilla}; P=127.0.0.1:7801,127.0.0.1:7802,127.0.0.1:7803; D=${DIR:-/tmp/flotilla-sustained}
rm -rf $D; mkdir -p $D
start() { for i in 0 1 2; do $F kvraft serve --id $i --peers $P --data $D/n$i >> $D/log$i 2>&1 & echo $! > $D/pid$i; done; }
start; sleep 1
$F kv bench --cluster $P --clients 64 --seconds ${SECS:-300} --get-share 0 --keys 100000 --value-size 64
for i in 0 1 2; do echo "node $i: $(grep -E 'VmHWM|VmRSS' /proc/$(cat $D/pid$i)/status | tr -s ' ' | tr '\n' ' ')"; done
$F kvraft status --cluster $P | grep -v follower
for i in 0 1 2; do kill -9 $(cat $D/pid$i); done; sleep 0.5
ls -la $D/n0 | tail -4
t0=$(date +%s.%N); start
until $F kv get --cluster $P probe-missing-key 2>&1 | grep -q "no key"; do sleep 0.01; done
t1=$(date +%s.%N); echo "restart of all 3 to first linearizable read: $(echo "$t1 - $t0" | bc) s"
$F kvraft status --cluster $P | grep -v follower
for i in 0 1 2; do kill $(cat $D/pid$i); done
