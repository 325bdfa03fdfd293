#!/bin/sh
# Word count for the exec app, reduce side, in awk.
#
# stdin holds every pair of the reduce task, key<TAB>value, sorted by key; print one line
# key<TAB>result per distinct key, in the same order. Here: the sum of the counts.
exec awk -F '\t' '
$1 != key {
    if (NR > 1)
        print key "\t" sum
    key = $1
    sum = 0
}
{ sum += $2 }
END {
    if (NR > 0)
        print key "\t" sum
}'
