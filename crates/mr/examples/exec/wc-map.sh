#!/bin/sh
# Word count for the exec app, map side, in awk.
#
#   flotilla mr worker --app exec --map-cmd 'sh examples/exec/wc-map.sh' \
#                                 --reduce-cmd 'sh examples/exec/wc-reduce.sh'
#
# The input arrives on stdin (its name is "$1" of the --map-cmd command, and $FLOTILLA_INPUT_NAME);
# every output line is one pair, key<TAB>value. This map counts the words of its whole input
# and prints each distinct word once with its count (combining in the mapper, like the
# built-in wc). Words here are runs of ASCII letters; examples/exec/wc_map.py splits exactly
# like the built-in wc (every Unicode letter). Words contain no tab, newline or backslash, so
# nothing needs escaping.
exec awk '
{
    n = split($0, words, /[^A-Za-z]+/)
    for (i = 1; i <= n; i++)
        if (words[i] != "")
            count[words[i]]++
}
END {
    for (word in count)
        print word "\t" count[word]
}'
