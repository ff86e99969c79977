package controller

// RBAC of the operator's own namespace (install.sh installs into
// nixos-operator-system): the CA Secret it creates on first start and then only
// reads (the Secret is immutable), the webhook Secret it watches (a list and watch
// with the field selector metadata.name=nio-webhook, which resourceNames allow:
// cmd/nio-operator/webhook.go), and the lease of leader election. Secrets
// elsewhere are only read (see the reconcilers' markers); facts ConfigMaps are the
// only objects it writes in the managed namespaces, besides statuses and events.

// +kubebuilder:rbac:groups="",namespace=nixos-operator-system,resources=secrets,verbs=create
// +kubebuilder:rbac:groups="",namespace=nixos-operator-system,resources=secrets,resourceNames=nio-ca,verbs=get
// +kubebuilder:rbac:groups="",namespace=nixos-operator-system,resources=secrets,resourceNames=nio-webhook,verbs=list;watch
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=nixos-operator-system,resources=leases,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",namespace=nixos-operator-system,resources=events,verbs=create;patch
