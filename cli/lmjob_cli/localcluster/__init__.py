"""A Kubernetes cluster on this machine without containers: the real control plane binaries
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler) plus local nodes whose pods run
as processes (`lmjob cluster up|down|status`; the test suite starts the same pieces).

Modules: `controlplane` (start/stop/attach the control plane), `process_kubelet` (run pods as
processes), `kubelet_node` (the Node object, its heartbeats and log endpoint), `node` (one local
node as a long-running process), `lifecycle` (up/down/status of the whole cluster), `command`
(the `lmjob cluster` subcommand); `binaries`, `certs` and `kubeconfig` support them.
"""
