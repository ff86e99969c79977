package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/facts"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/pki"
	"github.com/homystack/nio/operator/internal/transport"
)

// MachineReconciler keeps a Machine's status true to its host and to its
// configuration: reachability (agent, then SSH), the running system, the SSH host key,
// the nixos-facter facts, the agent's TLS identity (delivered over SSH to an agent
// without one, renewed at two thirds of its life), and what was applied to it, copied
// from the status of the NixosConfiguration applied last. It is the one writer of the
// Machine's status, once per pass.
type MachineReconciler struct {
	client.Client
	Recorder events.EventRecorder
	Hosts    host.Hosts
	Locks    *HostLocks
	PKI      *pki.Issuer
	Metrics  *Metrics

	// ProbeInterval is how often a Machine is probed (default 1m).
	ProbeInterval time.Duration
	// FactsInterval is how often facts are collected again without a request
	// (default 24h).
	FactsInterval time.Duration
	// Now is the clock (tests).
	Now func() time.Time

	// LastSeenRefresh is how often status.agent.lastSeenTime moves while nothing
	// else about the agent changes (default DefaultLastSeenRefresh).
	LastSeenRefresh time.Duration

	// FactsRetry is how long a failed nixos-facter run waits before the next try
	// (default 10m); a new rescan request is tried at once.
	FactsRetry time.Duration

	// factsFailed remembers when collecting facts last failed per Machine, and for
	// which rescan request, so a host without nixos-facter is asked again every
	// FactsRetry, not on every probe.
	factsMu     sync.Mutex
	factsFailed map[types.NamespacedName]factsFailure

	// probed remembers each Machine's last probe: a pass brought by a configuration's
	// status only copies what was applied, and probes the host only when a probe is
	// due anyway (the interval passed, or the Machine or its SSH key Secret changed).
	probeMu sync.Mutex
	probed  map[types.NamespacedName]probeMemo
}

// DefaultLastSeenRefresh is MachineReconciler.LastSeenRefresh's default.
const DefaultLastSeenRefresh = 30 * time.Minute

type probeMemo struct {
	at          time.Time
	generation  int64
	annotations string
}

type factsFailure struct {
	at     time.Time
	rescan string // the rescan annotation's value the failed run served
}

// +kubebuilder:rbac:groups=nio.homystack.com,resources=machines,verbs=get;list;watch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=machines/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=nio.homystack.com,resources=nixosconfigurations,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile runs one pass for one Machine.
func (r *MachineReconciler) Reconcile(ctx context.Context, req reconcile.Request) (result reconcile.Result, retErr error) {
	start := r.now()
	m := &nio.Machine{}
	if err := r.Get(ctx, req.NamespacedName, m); err != nil {
		if apierrors.IsNotFound(err) {
			r.forgetProbe(req.NamespacedName)
			r.Hosts.Forget(req.NamespacedName)
		}
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	defer func() { r.Metrics.observeReconcile("Machine", start, retErr) }()
	// People edit this status too (clearing sshHostKeyFingerprint to accept a new host
	// key): a pass that read an older Machine must not write back what it saw, so the
	// write is conditional on the version read.
	sw := newStatusWriter(r.Client, m)
	sw.optimistic = true
	defer func() {
		err := sw.flush(ctx, m)
		if err != nil {
			// What this pass observed was not written: the retry observes again.
			r.forgetProbe(req.NamespacedName)
		}
		switch {
		case apierrors.IsConflict(err):
			log.FromContext(ctx).V(1).Info("Machine changed during the pass; probing again")
			result, retErr = reconcile.Result{RequeueAfter: time.Second}, nil
		case err != nil && retErr == nil:
			retErr = err
		}
	}()
	m.Status.ObservedGeneration = m.Generation

	summary := outcome.Summary{Object: m, Conditions: &m.Status.Conditions, Recorder: r.Recorder}
	appliedBefore := m.Status.LastAppliedTime.DeepCopy()
	if err := r.observeConfiguration(ctx, m); err != nil {
		return summary.Summarize(ctx, outcome.Success{}, err)
	}
	// A new apply is probed at once: the host runs another system (and generation),
	// written with the applied commit in one status write instead of two.
	newApply := m.Status.LastAppliedTime != nil && (appliedBefore == nil || !appliedBefore.Equal(m.Status.LastAppliedTime))
	if wait, due := r.probeDue(m); !due && !newApply {
		// Nothing new was observed of the host: its conditions stand.
		return reconcile.Result{RequeueAfter: wait}, nil
	}

	host, err := r.Hosts.Open(ctx, m)
	if err != nil {
		return summary.Summarize(ctx, outcome.Success{}, r.unreachable(m, err))
	}
	defer host.Close()

	r.rememberProbe(m)
	probe := host.Probe(ctx)
	ok, err := r.observeProbe(m, probe)
	if kind, _ := outcome.Classify(probe.SSHError); kind == outcome.KindStalling {
		// The probe needed SSH (the agent does not answer, or the host key is not
		// recorded yet) and the SSH key Secret is missing or its key unparsable: the
		// user's to fix, as when Open failed on it. The Secret is read only when SSH
		// is needed: while the agent answers and the host key is recorded, a missing
		// one shows at the first probe that needs SSH.
		err = probe.SSHError
		if !probe.AgentReachable {
			err = r.unreachable(m, err)
		}
		return summary.Summarize(ctx, outcome.Success{}, err)
	}
	if err == nil {
		r.observeSystem(ctx, m, host, probe)
		r.collectFacts(ctx, m, host)
		r.maintainAgentIdentity(ctx, m, host, probe)
	}
	return summary.Summarize(ctx, ok, err)
}

// unreachable records that the host could not be tried: Reachable is Unknown. A
// missing SSH key Secret (or key in it) is the user's to fix: it stalls, and the
// Secret watch brings the next pass when it appears.
func (r *MachineReconciler) unreachable(m *nio.Machine, err error) error {
	reason := ReasonHostUnreachable
	if kind, why := outcome.Classify(err); kind == outcome.KindStalling {
		reason = why
	} else {
		err = outcome.Failed(ReasonHostUnreachable, err)
	}
	setCondition(&m.Status.Conditions, m.Generation, nio.ConditionReachable, metav1.ConditionUnknown, reason, err.Error())
	return err
}

// observeConfiguration copies what was applied to the Machine from the status of the
// NixosConfiguration applied to it last (the one whose status.targetMachine names it
// with the latest lastAppliedTime), or clears it when there is none. The
// configuration's status is the record: a Machine write that fails is repaired by the
// next pass, and appliedCommit never names a commit that did not switch, since the
// configuration's does not.
func (r *MachineReconciler) observeConfiguration(ctx context.Context, m *nio.Machine) error {
	var list nio.NixosConfigurationList
	if err := r.List(ctx, &list, client.InNamespace(m.Namespace), client.MatchingFields{indexTargetMachine: m.Name}); err != nil {
		return fmt.Errorf("list configurations applied to Machine %s: %w", m.Name, err)
	}
	st := &m.Status
	c := lastApplied(list.Items, m.Name)
	if c == nil {
		st.HasConfiguration, st.AppliedConfiguration, st.AppliedCommit, st.AppliedCommitShort, st.LastAppliedTime = false, "", "", "", nil
		return nil
	}
	cs := &c.Status
	// An install the Machine has not seen yet (it predates its lastAppliedTime
	// otherwise) brings the host key the operator generated for the new system. Once
	// taken, a person may still clear the fingerprint to accept another key.
	if cs.InstalledHostKeyFingerprint != "" && cs.InstalledTime != nil && (st.LastAppliedTime == nil || st.LastAppliedTime.Before(cs.InstalledTime)) {
		st.SSHHostKeyFingerprint = cs.InstalledHostKeyFingerprint
	}
	st.HasConfiguration, st.AppliedConfiguration = true, c.Name
	st.AppliedCommit, st.AppliedCommitShort, st.LastAppliedTime = cs.AppliedCommit, shortCommit(cs.AppliedCommit), cs.LastAppliedTime.DeepCopy()
	return nil
}

// lastApplied is, among configurations, the one applied last to Machine machine.
func lastApplied(items []nio.NixosConfiguration, machine string) *nio.NixosConfiguration {
	var last *nio.NixosConfiguration
	for i := range items {
		c := &items[i]
		if c.Status.TargetMachine != machine || c.Status.AppliedCommit == "" {
			continue
		}
		if last == nil || appliedAt(c).After(appliedAt(last)) || appliedAt(c).Equal(appliedAt(last)) && c.Name < last.Name {
			last = c
		}
	}
	return last
}

func appliedAt(c *nio.NixosConfiguration) time.Time {
	if c.Status.LastAppliedTime == nil {
		return time.Time{}
	}
	return c.Status.LastAppliedTime.Time
}

// probeDue tells whether the pass probes the host, or how long until it does.
func (r *MachineReconciler) probeDue(m *nio.Machine) (time.Duration, bool) {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	last, ok := r.probed[types.NamespacedName{Namespace: m.Namespace, Name: m.Name}]
	if !ok || last.generation != m.Generation || last.annotations != fmt.Sprint(m.Annotations) {
		return 0, true
	}
	wait := last.at.Add(r.probeInterval()).Sub(r.now())
	return wait, wait <= 0
}

func (r *MachineReconciler) rememberProbe(m *nio.Machine) {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	if r.probed == nil {
		r.probed = map[types.NamespacedName]probeMemo{}
	}
	r.probed[types.NamespacedName{Namespace: m.Namespace, Name: m.Name}] = probeMemo{
		at: r.now(), generation: m.Generation, annotations: fmt.Sprint(m.Annotations),
	}
}

// forgetProbe makes the next pass of Machine key probe the host.
func (r *MachineReconciler) forgetProbe(key types.NamespacedName) {
	r.probeMu.Lock()
	defer r.probeMu.Unlock()
	delete(r.probed, key)
}

// observeProbe records what the probe saw: discoverable, the agent, the host key, the
// Reachable and AgentConnected conditions; and its verdict, retried at the next probe.
// A host reachable with the key it should have is ready for the other duties.
func (r *MachineReconciler) observeProbe(m *nio.Machine, p transport.ProbeResult) (outcome.Success, error) {
	st, gen, now := &m.Status, m.Generation, metav1.NewTime(r.now())
	st.Discoverable = p.AgentReachable || p.SSHReachable

	if m.Spec.Agent.Disabled {
		st.Agent = nil
		setCondition(&st.Conditions, gen, nio.ConditionAgentConnected, metav1.ConditionFalse, ReasonAgentDisabled, "spec.agent.disabled is set: SSH only")
	} else {
		if st.Agent == nil {
			st.Agent = &nio.AgentStatus{}
		}
		wasConnected, oldVersion := st.Agent.Connected, st.Agent.Version
		st.Agent.Connected = p.AgentReachable
		if p.AgentReachable {
			st.Agent.Version = p.AgentVersion
			if r.refreshLastSeen(st, wasConnected, oldVersion) {
				st.Agent.LastSeenTime = &now
			}
			setCondition(&st.Conditions, gen, nio.ConditionAgentConnected, metav1.ConditionTrue, ReasonConnected, "nio-agent "+p.AgentVersion+" answers over mTLS")
		} else {
			setCondition(&st.Conditions, gen, nio.ConditionAgentConnected, metav1.ConditionFalse, ReasonAgentUnreachable, errText(p.AgentError, "nio-agent does not answer"))
		}
	}

	if p.SSHHostKeyFingerprint != "" && st.SSHHostKeyFingerprint == "" && !errors.Is(p.SSHError, transport.ErrHostKeyMismatch) {
		st.SSHHostKeyFingerprint = p.SSHHostKeyFingerprint
	}

	switch {
	case errors.Is(p.SSHError, transport.ErrHostKeyMismatch):
		msg := fmt.Sprintf("%v; if the host was reinstalled on purpose, set spec.sshHostKey or clear status.sshHostKeyFingerprint", p.SSHError)
		setCondition(&st.Conditions, gen, nio.ConditionReachable, metav1.ConditionFalse, ReasonHostKeyMismatch, msg)
		return outcome.Success{}, outcome.Retry(r.probeInterval(), ReasonHostKeyMismatch, msg)
	case st.Discoverable:
		how := reachableOver(p)
		setCondition(&st.Conditions, gen, nio.ConditionReachable, metav1.ConditionTrue, ReasonReachable, how)
		return outcome.Success{Reason: ReasonReachable, Message: how, RequeueAfter: r.probeInterval()}, nil
	default:
		msg := fmt.Sprintf("agent: %s; ssh: %s", errText(p.AgentError, "disabled"), errText(p.SSHError, "not configured"))
		setCondition(&st.Conditions, gen, nio.ConditionReachable, metav1.ConditionFalse, ReasonHostUnreachable, msg)
		return outcome.Success{}, outcome.Retry(r.probeInterval(), ReasonHostUnreachable, msg)
	}
}

// refreshLastSeen tells whether a probe the agent answered moves
// status.agent.lastSeenTime. It does when the answer says something the status did
// not (first answer, back after an outage, another version; another system moves it
// too, in observeSystem: drift is judged on an answer later than the apply), and
// otherwise once per LastSeenRefresh: a status write per Machine per probe would cost
// a fleet of 1000 a thousand API writes a minute to say nothing new. Connected and
// the AgentConnected condition change at the first failed probe.
func (r *MachineReconciler) refreshLastSeen(st *nio.MachineStatus, wasConnected bool, oldVersion string) bool {
	seen := st.Agent.LastSeenTime
	if seen == nil || !wasConnected || oldVersion != st.Agent.Version {
		return true
	}
	refresh := r.LastSeenRefresh
	if refresh <= 0 {
		refresh = DefaultLastSeenRefresh
	}
	return r.now().Sub(seen.Time) >= refresh
}

// reachableOver says which ways answered a probe that reached the host.
func reachableOver(p transport.ProbeResult) string {
	switch {
	case p.AgentReachable && p.SSHSkipped:
		return "reachable over agent (SSH not probed while the agent answers and the host key is recorded)"
	case p.AgentReachable && p.SSHReachable:
		return "reachable over agent and SSH"
	case p.AgentReachable:
		return "reachable over agent"
	}
	return "reachable over SSH"
}

func errText(err error, otherwise string) string {
	if err == nil {
		return otherwise
	}
	return err.Error()
}

// observeSystem records the running system: as the probe's agent answer said, or
// asked of the host (over SSH when the agent did not answer).
func (r *MachineReconciler) observeSystem(ctx context.Context, m *nio.Machine, host host.Host, probe transport.ProbeResult) {
	var s transport.SystemStatus
	if probe.System != nil {
		s = *probe.System
	} else {
		var err error
		if s, err = host.Status(ctx); err != nil {
			log.FromContext(ctx).Info("host status", "error", err.Error())
			return
		}
	}
	sys := &nio.SystemStatus{
		CurrentSystem: s.CurrentSystem, BootedSystem: s.BootedSystem, Generation: s.Generation, NeedsReboot: s.NeedsReboot,
	}
	if old := m.Status.System; (old == nil || *old != *sys) && m.Status.Agent != nil && m.Status.Agent.Connected {
		// Another system seen is news: the time it was seen goes with it (drift).
		m.Status.Agent.LastSeenTime = &metav1.Time{Time: r.now()}
	}
	m.Status.System = sys
	if m.Status.Agent != nil && !s.CertificateNotAfter.IsZero() {
		m.Status.Agent.CertificateNotAfter = &metav1.Time{Time: s.CertificateNotAfter}
	}
}

// collectFacts takes a nixos-facter report on the first contact, on request (a new
// nio.homystack.com/rescan value) and every FactsInterval, into a ConfigMap owned by
// the Machine, with a summary in the status.
func (r *MachineReconciler) collectFacts(ctx context.Context, m *nio.Machine, host host.Host) {
	st := &m.Status
	rescan := m.Annotations[nio.RescanAnnotation]
	requested := rescan != "" && rescan != st.LastHandledRescanAt
	due := st.LastHardwareScanTime == nil || requested || r.now().Sub(st.LastHardwareScanTime.Time) >= r.factsInterval()
	key := types.NamespacedName{Namespace: m.Namespace, Name: m.Name}
	r.factsMu.Lock()
	last, failed := r.factsFailed[key]
	r.factsMu.Unlock()
	newRequest := requested && (!failed || last.rescan != rescan)
	if !due || failed && !newRequest && r.now().Sub(last.at) < r.factsRetry() {
		return
	}
	report, err := host.Facts(ctx)
	if err == nil {
		err = r.storeFacts(ctx, m, report)
	}
	r.factsMu.Lock()
	defer r.factsMu.Unlock()
	if err != nil {
		if r.factsFailed == nil {
			r.factsFailed = map[types.NamespacedName]factsFailure{}
		}
		// The request stays pending (lastHandledRescanAt unchanged): it is retried
		// after FactsRetry, and survives an operator restart.
		r.factsFailed[key] = factsFailure{at: r.now(), rescan: rescan}
		log.FromContext(ctx).Info("facts not collected", "error", err.Error())
		r.event(m, corev1.EventTypeWarning, "FactsFailed", "CollectFacts", "collect facts: "+err.Error())
		return
	}
	delete(r.factsFailed, key)
	st.LastHardwareScanTime = &metav1.Time{Time: r.now()}
	st.LastHandledRescanAt = rescan
}

// FactsConfigMapName is the ConfigMap holding a Machine's nixos-facter report.
func FactsConfigMapName(machine string) string { return machine + "-facter" }

func (r *MachineReconciler) storeFacts(ctx context.Context, m *nio.Machine, report []byte) error {
	summary, err := facts.Summarize(report)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{}
	cm.Namespace, cm.Name = m.Namespace, FactsConfigMapName(m.Name)
	if _, err := controllerutil.CreateOrPatch(ctx, r.Client, cm, func() error {
		if cm.Labels == nil {
			cm.Labels = map[string]string{}
		}
		cm.Labels["app.kubernetes.io/managed-by"] = "nio"
		cm.Labels["nio.homystack.com/machine"] = m.Name
		cm.Data = map[string]string{FacterReportKey: string(report)}
		return controllerutil.SetControllerReference(m, cm, r.Scheme())
	}); err != nil {
		return fmt.Errorf("store report in ConfigMap %s: %w", cm.Name, err)
	}
	summary.ReportConfigMap = cm.Name
	m.Status.Facts = &summary
	return nil
}

// maintainAgentIdentity delivers the agent's TLS identity over SSH to a host whose
// agent has none, and renews a connected agent's certificate at two thirds of its life.
func (r *MachineReconciler) maintainAgentIdentity(ctx context.Context, m *nio.Machine, host host.Host, p transport.ProbeResult) {
	if m.Spec.Agent.Disabled || r.PKI == nil {
		return
	}
	logger := log.FromContext(ctx)
	switch {
	case p.AgentReachable && m.Status.Agent != nil && m.Status.Agent.CertificateNotAfter != nil:
		notAfter := m.Status.Agent.CertificateNotAfter.Time
		if !pki.NeedsRenewal(notAfter.Add(-r.PKI.MachineServerValidity), notAfter, r.now()) {
			return
		}
		newNotAfter, err := host.RenewAgentCertificate(ctx, func(csr []byte) ([]byte, error) {
			return r.PKI.SignMachineCSR(csr, m.Namespace, m.Name)
		})
		if err != nil {
			logger.Info("agent certificate renewal failed", "error", err.Error())
			r.event(m, corev1.EventTypeWarning, "CertificateRenewalFailed", "RenewCertificate", err.Error())
			return
		}
		m.Status.Agent.CertificateNotAfter = &metav1.Time{Time: newNotAfter}
		r.event(m, corev1.EventTypeNormal, "CertificateRenewed", "RenewCertificate", "agent certificate renewed until "+newNotAfter.UTC().Format(time.RFC3339))
	case !p.AgentReachable && p.SSHReachable:
		present, err := host.AgentIdentityPresent(ctx)
		if err != nil {
			// Without this check the agent never gets an identity, and nothing else
			// would say why it stays unreachable.
			msg := fmt.Sprintf("cannot tell whether the host holds the agent's TLS identity, so none is delivered: %v", err)
			logger.Info("agent identity check failed", "error", err.Error())
			r.event(m, corev1.EventTypeWarning, ReasonAgentIdentityFailed, "CheckIdentity", msg)
			setCondition(&m.Status.Conditions, m.Generation, nio.ConditionAgentConnected, metav1.ConditionFalse, ReasonAgentIdentityFailed,
				errText(p.AgentError, "nio-agent does not answer")+"; "+msg)
			return
		}
		if present {
			return // an agent that has its identity but is down: SSH serves meanwhile
		}
		unlock, _, ok := r.Locks.TryLock(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, "agent identity delivery")
		if !ok {
			return
		}
		defer unlock()
		ident, err := r.PKI.IssueMachineServer(m.Namespace, m.Name)
		if err == nil {
			err = host.InstallAgentIdentity(ctx, ident.CAPEM, ident.CertPEM, ident.KeyPEM)
		}
		if err != nil {
			logger.Info("agent identity delivery failed", "error", err.Error())
			r.event(m, corev1.EventTypeWarning, ReasonAgentIdentityFailed, "DeliverIdentity", err.Error())
			setCondition(&m.Status.Conditions, m.Generation, nio.ConditionAgentConnected, metav1.ConditionFalse, ReasonAgentIdentityFailed,
				errText(p.AgentError, "nio-agent does not answer")+"; delivering its TLS identity over SSH failed: "+err.Error())
			return
		}
		r.event(m, corev1.EventTypeNormal, ReasonAgentIdentityDelivered, "DeliverIdentity", "delivered the agent's TLS identity over SSH and restarted nio-agent")
	}
}

func (r *MachineReconciler) event(m *nio.Machine, typ, reason, action, note string) {
	if r.Recorder != nil {
		r.Recorder.Eventf(m, nil, typ, reason, action, "%s", truncate(note, eventNoteLimit))
	}
}

func (r *MachineReconciler) now() time.Time { return clockNow(r.Now) }

func (r *MachineReconciler) probeInterval() time.Duration {
	if r.ProbeInterval > 0 {
		return r.ProbeInterval
	}
	return time.Minute
}

func (r *MachineReconciler) factsRetry() time.Duration {
	if r.FactsRetry > 0 {
		return r.FactsRetry
	}
	return 10 * time.Minute
}

func (r *MachineReconciler) factsInterval() time.Duration {
	if r.FactsInterval > 0 {
		return r.FactsInterval
	}
	return 24 * time.Hour
}
