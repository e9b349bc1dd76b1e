#!/usr/bin/env bash
# Entrypoint of the Esker spark image: ENTRYPOINT ["tini", "-g", "--", "/usr/local/bin/esker-spark-entrypoint"].
#
# One image serves two roles:
#
#   executor   Spark's Kubernetes scheduler (spark_mode: kubernetes) starts executor pods from the notebook's
#              image with the single argument `executor` and describes the executor in the pod's environment.
#              This starts org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend from it, as the
#              image's non-root notebook user (NB_UID/NB_GID; a container started as root drops to them).
#   anything   handed unchanged to Docker Stacks' start.sh, exactly as the base image's own entrypoint
#   else       does (`jupyterhub-singleuser ...` from KubeSpawner, start-notebook.py by default).
#
# What the scheduler sets on an executor pod (pyspark 4.3.0, BasicExecutorFeatureStep and Constants):
#   SPARK_DRIVER_URL           spark://CoarseGrainedScheduler@<driver host>:<spark.driver.port>
#   SPARK_EXECUTOR_ID          the executor's id (digits)
#   SPARK_EXECUTOR_CORES       cores it may use
#   SPARK_EXECUTOR_MEMORY      heap, with a unit (1024m): both -Xms and -Xmx
#   SPARK_APPLICATION_ID       the application's id (spark-...)
#   SPARK_RESOURCE_PROFILE_ID  its resource profile (0 is the default profile)
#   SPARK_EXECUTOR_POD_IP      status.podIP: the address it advertises to the driver
#   SPARK_EXECUTOR_POD_NAME    metadata.name
#   SPARK_CONF_DIR             where the executor ConfigMap is mounted (/opt/spark/conf): on the classpath
#   SPARK_JAVA_OPT_<n>         JVM options, one per variable, in the order of n (Java module options,
#                              spark.executor.extraJavaOptions, startup confs such as spark.driver.port)
#   SPARK_CLASSPATH            spark.executor.extraClassPath, before Spark's own jars
#   SPARK_EXECUTOR_LIBRARY_PATH  spark.executor.extraLibraryPath, put in front of LD_LIBRARY_PATH
#   SPARK_USER, _SPARK_AUTH_SECRET, SPARK_EXECUTOR_ATTRIBUTE_*, spark.executorEnv.*: read by the JVM itself.
# Also honoured: HADOOP_CONF_DIR (first on the classpath after the conf dir), SPARK_EXTRA_CLASSPATH and
# SPARK_DIST_CLASSPATH (after the jars).
#
# ESKER_ENTRYPOINT_DRY_RUN=1 prints the command it would run, each argument followed by a NUL byte, and
# exits 0 without side effects (`... | tr '\0' '\n'` to read it). tests/kubernetes/test_spark_executor_image.py
# checks that command against pyspark's jars and runs a real executor with it.
set -euo pipefail

me=esker-spark-entrypoint

die() {
    echo "$me: $*" >&2
    exit 64
}

launch() {
    if [[ "${ESKER_ENTRYPOINT_DRY_RUN:-}" == 1 ]]; then
        printf '%s\0' "$@"
        exit 0
    fi
    exec "$@"
}

require() {
    local name
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || die "executor: \$$name is not set (Spark's Kubernetes scheduler sets it on executor pods)"
    done
}

# The classpath, entries joined with ':' and empty ones left out (an empty entry would mean the working
# directory). $SPARK_HOME/jars/* stays a literal wildcard: the JVM expands it.
classpath() {
    local out="" entry
    for entry in "$@"; do
        if [[ -n "$entry" ]]; then
            out="${out:+$out:}$entry"
        fi
    done
    printf '%s' "$out"
}

executor() {
    [[ -n "${SPARK_HOME:-}" ]] || die "executor: \$SPARK_HOME is not set (the image sets it: pyspark's folder)"
    require SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_EXECUTOR_MEMORY SPARK_APPLICATION_ID

    local java="java"
    if [[ -n "${JAVA_HOME:-}" ]]; then
        java="$JAVA_HOME/bin/java"
    fi

    # SPARK_JAVA_OPT_0, _1, ... _10: numeric order; each value is one argument, spaces and all.
    local -a jvm_opts=()
    local name
    while IFS= read -r name; do
        jvm_opts+=("${!name}")
    done < <(compgen -e | grep -E '^SPARK_JAVA_OPT_[0-9]+$' | sort -t_ -k4,4n || true)

    local cp
    cp="$(classpath "${SPARK_CONF_DIR:-$SPARK_HOME/conf}" "${HADOOP_CONF_DIR:-}" "${SPARK_CLASSPATH:-}" \
        "$SPARK_HOME/jars/*" "${SPARK_EXTRA_CLASSPATH:-}" "${SPARK_DIST_CLASSPATH:-}")"

    local -a backend=(
        --driver-url "$SPARK_DRIVER_URL"
        --executor-id "$SPARK_EXECUTOR_ID"
        --cores "$SPARK_EXECUTOR_CORES"
        --app-id "$SPARK_APPLICATION_ID"
        --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}"
    )
    # Without a pod IP the backend advertises the local host name (outside a pod: a test, a debug run).
    if [[ -n "${SPARK_EXECUTOR_POD_IP:-}" ]]; then
        backend+=(--hostname "$SPARK_EXECUTOR_POD_IP")
    fi
    if [[ -n "${SPARK_EXECUTOR_POD_NAME:-}" ]]; then
        backend+=(--podName "$SPARK_EXECUTOR_POD_NAME")
    fi

    local -a cmd=()
    # Never as root: a pod (or a pod template) that starts the container as uid 0 gets the notebook user.
    if [[ "$(id -u)" == 0 ]]; then
        cmd+=(setpriv "--reuid=${NB_UID:-1000}" "--regid=${NB_GID:-100}" --init-groups)
    elif [[ "${ESKER_ENTRYPOINT_DRY_RUN:-}" != 1 ]] && ! getent passwd "$(id -u)" >/dev/null \
        && [[ -w /etc/passwd ]]; then
        # An arbitrary uid (OpenShift-style) has no passwd entry; the JVM and Hadoop want a user name.
        # Docker Stacks leaves /etc/passwd group-writable for exactly this.
        echo "${SPARK_USER_NAME:-spark}:x:$(id -u):$(id -g):Spark executor:${HOME:-/tmp}:/usr/sbin/nologin" >>/etc/passwd
    fi
    if [[ -n "${SPARK_EXECUTOR_LIBRARY_PATH:-}" ]]; then
        cmd+=(env "LD_LIBRARY_PATH=$SPARK_EXECUTOR_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    fi
    cmd+=("$java" "${jvm_opts[@]}" "-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY" -cp "$cp"
        org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend "${backend[@]}")
    launch "${cmd[@]}"
}

case "${1:-}" in
    executor)
        executor
        ;;
    driver)
        # Esker runs the driver in the notebook (client mode); a driver pod would need RBAC and a submission
        # path Esker does not set up.
        die "driver: spark-submit --deploy-mode cluster is not supported; the driver runs in the notebook (client mode)"
        ;;
    *)
        launch "${ESKER_START_SCRIPT:-start.sh}" "$@"
        ;;
esac
