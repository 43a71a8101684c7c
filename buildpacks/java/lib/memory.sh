# Pier's JVM memory calculator, sourced at launch (and by bin/compile for its summary).
# Like Cloud Foundry's java-buildpack-memory-calculator: the heap is what is left of the instance's
# memory limit after the JVM's non-heap memory, so the process stays under the limit:
#   heap = limit - (metaspace + threads x stack + code cache + direct memory + headroom)
#   metaspace   limit/8, 32M..256M          code cache  limit/16, 16M..240M
#   threads     $JAVA_THREAD_COUNT (50) x 512K stacks   direct memory 10M
#   headroom    limit/10, at least 16M (GC structures, malloc arenas, the JVM itself)
# Sets JAVA_MEMORY_OPTS and prepends it to JAVA_OPTS (the user's JAVA_OPTS come after and win).
pier_java_mb() { # MEMORY_LIMIT like 256m, 1g, 1024M, or bytes → MiB
  local v=${1,,}
  case $v in
    *g) echo $((${v%g} * 1024)) ;;
    *m) echo "${v%m}" ;;
    *k) echo $((${v%k} / 1024)) ;;
    '' | *[!0-9]*) echo 1024 ;;
    *) echo $((v / 1048576)) ;;
  esac
}
pier_java_clamp() { local v=$1; ((v < $2)) && v=$2; ((v > $3)) && v=$3; echo "$v"; }
pier_java_limit=$(pier_java_mb "${MEMORY_LIMIT:-1024m}")
pier_java_threads=${JAVA_THREAD_COUNT:-50}
pier_java_meta=$(pier_java_clamp $((pier_java_limit / 8)) 32 256)
pier_java_code=$(pier_java_clamp $((pier_java_limit / 16)) 16 240)
pier_java_stack_mb=$(((pier_java_threads * 512 + 1023) / 1024))
pier_java_head=$((pier_java_limit / 10))
((pier_java_head < 16)) && pier_java_head=16
pier_java_heap=$((pier_java_limit - pier_java_meta - pier_java_code - pier_java_stack_mb - 10 - pier_java_head))
if ((pier_java_heap < 8)); then
  echo "Pier java: MEMORY_LIMIT=${MEMORY_LIMIT:-} leaves no room for a heap after the JVM's non-heap memory ($((pier_java_limit - pier_java_heap))M); using -Xmx8M. Scale the app to at least 128M: pier scale APP -m 256M" >&2
  pier_java_heap=8
fi
JAVA_MEMORY_OPTS="-Xmx${pier_java_heap}M -Xss512K -XX:MaxMetaspaceSize=${pier_java_meta}M -XX:ReservedCodeCacheSize=${pier_java_code}M -XX:MaxDirectMemorySize=10M -XX:+ExitOnOutOfMemoryError"
export JAVA_MEMORY_OPTS
export JAVA_OPTS="$JAVA_MEMORY_OPTS${JAVA_OPTS:+ $JAVA_OPTS}"
[ -n "${PIER_JAVA_QUIET:-}" ] || echo "JVM memory for MEMORY_LIMIT=${MEMORY_LIMIT:-unset} (${pier_java_limit}M): $JAVA_MEMORY_OPTS"
unset pier_java_limit pier_java_threads pier_java_meta pier_java_code pier_java_stack_mb pier_java_head pier_java_heap
