# Inference: one job per (cell, shard), a thin client of a model server that loads the model once per load group.
#
# Cells keep their own output, params, log and rerun semantics; the model_server job of their load
# (workflow_scripts/server_plan.py: model_server.group in the config, default one group per model, split into loads
# of at most max_cells cell shards / max_hours of estimated work) is a Snakemake service: it runs together with the
# load's cells that need to run, in one group job (one SLURM job through profiles/slurm), and is stopped when they
# are done.
#
# How a changed cell reruns only itself: a cell takes its server's rendezvous file as a `service(ancient(...))`
# input, and such an input counts as present while Snakemake plans (workflow_scripts/service_inputs.py), so a
# server that has to run does not make its other cells rerun, and nothing is written by a dry run; the input is
# flagged `service` on the cell's side too, so Snakemake records it as "<service>" whatever the server, and
# regrouping cells is not a rerun trigger either. Snakemake runs a service whenever one of its consumers has to run.
# A rendezvous file left by a server that outlived its Snakemake (kill -9) is removed by that server's watchdog (or,
# if it was killed too, when the Snakefile loads: LOADS.remove_stale): Snakemake would take it as the server's
# incomplete output, force the server and skip every job downstream of it.

from snakemake.logging import logger

from workflow_scripts import server_plan as sfs
from workflow_scripts import service_inputs

LOADS = sfs.LoadPlan(STUDY)
for _stale in LOADS.remove_stale():
    logger.info(f"model_server: removed {_stale}, left by a server whose Snakemake was killed")
# every cell of the loads that run at once in flight, so that a unit's decode-side cells share their prefill
service_inputs.widen_local_pool(LOADS.local_pool_extra(workflow.cores))
if not service_inputs.apply():
    logger.warning("model_server: unknown Snakemake version; creating rendezvous placeholders (a dry run writes them)")
    try:
        LOADS.ensure_placeholders()
    except OSError as err:
        logger.warning(
            f"model_server: cannot create rendezvous placeholders ({err}); cells may rerun with their server"
        )


# The cell's side of the group job: no CPU, GPU or memory of its own (the server holds them; Snakemake sums the
# resources of a service group), so a group requests exactly what its model server needs.
# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk)
rule infer:
    input:
        unpack(_infer_inputs),
    output:
        PRED,
    log:
        sfc.LOG_INFER,
    group:
        _infer_group
    threads: 0
    resources:
        gpu=0,
        mem_mb=0,
        runtime=1,
    params:
        cell=_infer_params,
    shell:
        "{PY} workflow_scripts.server_client --address {input.server:q} --cell {params.cell:q}"
        " --data {input.data:q} --out {output:q} > {log:q} 2>&1"


# One model load: serves the cells of its load group (workflow_scripts/server.py). No params and no inputs, on
# purpose: a server job that Snakemake would rerun for its own sake (changed params, newer input, changed code)
# masks its cells from the check of their own changes (Snakemake then only follows the server's outputs, which the
# cells take as `ancient`). The server learns the model from its first cell; the group waits for the cells' inputs
# (model, data, calibration). Do not force this rule (--forcerun model_server): a server without cells to serve
# idles until its timeout (SFW_SERVER_IDLE_TIMEOUT, 300 s). The shell writes the server's address (a socket file in
# the owner-only sfs.SOCKET_DIR) and pid into the rendezvous file before Python starts, since Snakemake makes each
# cell wait for that file for at most --latency-wait seconds; `exec` makes the server the process Snakemake signals
# (SIGTERM when the cells are done, SIGKILL when one failed).
# lint: runs the workflow's own Python environment, no conda/container (see rules/common.smk); the shell reads the
# globals PY, sfs (the socket folder) and LOADS (model_server.share_prefill) since this rule takes no params (see above)
rule model_server:
    output:
        service(sfs.ADDRESS),
    log:
        sfs.LOG,
    wildcard_constraints:
        server=sfs.SERVER_PATTERN,
    group:
        _server_group
    threads: _server_threads
    resources:
        gpu=_server_gpus,
        mem_mb=_server_mem_mb,
        runtime=_server_runtime,
    shell:
        "addr={sfs.SOCKET_DIR}/$$-$RANDOM$RANDOM.sock;"
        ' printf \'{{"address": "%s", "pid": %d, "host": "%s"}}\\n\' "$addr" $$ "$HOSTNAME"'
        " > {output:q};"
        ' exec {PY} workflow_scripts.server --listen "$addr" --address-file {output:q} --parent $PPID'
        " --server {wildcards.server:q} --threads {threads} --share-prefill {LOADS.share_flag}"
        " > {log:q} 2>&1"
