package controller

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/host"
	"github.com/homystack/nio/operator/internal/install"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/transport"
)

// Installer runs nixos-anywhere (install.Runner; a recording stand-in in tests: what
// can't run here — kexec, a disk wipe — is behind this seam).
type Installer interface {
	Run(ctx context.Context, req install.Request) (install.Result, error)
}

// installPending tells whether a fullInstall configuration's pass may install: not
// yet installed, or a reinstall asked for.
func installPending(obj *nio.NixosConfiguration) bool {
	reinstall := obj.Annotations[nio.ReinstallAnnotation]
	return !obj.Status.FullInstallCompleted || reinstall != "" && reinstall != obj.Status.LastHandledReinstallAt
}

// reconcileInstall runs nixos-anywhere once for a fullInstall configuration. It
// returns done=true when the host is installed and the pass may go on to day-two
// switches. The install is once-only: a host that carries the marker, or answers as
// nio-agent, is never wiped again unless a new nio.homystack.com/reinstall value asks
// for it. Status alone never decides a wipe.
func (r *NixosConfigurationReconciler) reconcileInstall(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource) (bool, outcome.Success, error) {
	if !installPending(obj) {
		return true, outcome.Success{}, nil
	}
	reinstall := obj.Annotations[nio.ReinstallAnnotation]
	wantReinstall := reinstall != "" && reinstall != obj.Status.LastHandledReinstallAt
	if !wantReinstall {
		if next, ok := r.nextInstallAttempt(obj, src); ok && next.After(r.now()) {
			msg := fmt.Sprintf("%s; next attempt after %s", installFailedMessage(obj), next.UTC().Format(time.RFC3339))
			return false, outcome.Success{}, outcome.Retry(next.Sub(r.now()), installFailedReason(obj), msg)
		}
	}
	unlock, holder, ok := r.Locks.TryLock(types.NamespacedName{Namespace: m.Namespace, Name: m.Name}, "install of "+obj.Name)
	if !ok {
		return false, outcome.Success{}, outcome.Wait(5*time.Second, ReasonProgressing, "Waiting for Machine %s: %s is running", m.Name, holder)
	}
	defer unlock()

	host, err := r.Hosts.Open(ctx, m)
	if err != nil {
		return false, outcome.Success{}, err
	}
	defer host.Close()

	if !wantReinstall {
		installed, how, err := r.installedAlready(ctx, host)
		if stalls(err) {
			return false, outcome.Success{}, err // the SSH key: missing or unparsable
		}
		if err != nil {
			setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionInstalled, metav1.ConditionFalse, ReasonHostUnreachable, err.Error())
			return false, outcome.Success{}, outcome.Failed(ReasonHostUnreachable, fmt.Errorf("Cannot tell whether Machine %s is installed: %w", m.Name, err))
		}
		if installed {
			obj.Status.FullInstallCompleted = true
			if obj.Status.InstalledTime == nil {
				obj.Status.InstalledTime = &metav1.Time{Time: r.now()}
			}
			setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionInstalled, metav1.ConditionTrue, ReasonAlreadyInstalled,
				fmt.Sprintf("Machine %s is already installed (%s); set %s to install again", m.Name, how, nio.ReinstallAnnotation))
			return true, outcome.Success{}, nil
		}
	}
	return r.runInstall(ctx, sw, obj, m, src, reinstall)
}

// maxInstallBackoff is the least a failing install's backoff may grow to. An install
// attempt kexecs into an installer and may wipe disks: a host that cannot be
// installed must not be put through that every interval.
const maxInstallBackoff = time.Hour

// nextInstallAttempt is when a failed install of these inputs may run again: the
// backoff starts at RetryBase and doubles per consecutive failed install of the same
// source, up to the interval or maxInstallBackoff, whichever is longer. It is read
// from status.history, so a restarted operator keeps it. ok is false when nothing
// holds the install back: no failure, new inputs (another commit or additional
// file), or a spec change since the failure (the user may have fixed what failed).
func (r *NixosConfigurationReconciler) nextInstallAttempt(obj *nio.NixosConfiguration, src *resolvedSource) (time.Time, bool) {
	st := obj.Status
	failures := 0
	for _, h := range st.History {
		if h.Transport != nio.TransportInstall || h.SourceDigest != src.archive.Digest || h.Result != nio.ResultFailed {
			break
		}
		failures++
	}
	installed := meta.FindStatusCondition(st.Conditions, nio.ConditionInstalled)
	// A timed-out install backs off like any failed one: it may have kexec'd and
	// wiped, and must not be re-run at once.
	if failures == 0 || installed == nil || (installed.Reason != ReasonInstallFailed && installed.Reason != ReasonTimeout) || installed.ObservedGeneration != obj.Generation {
		return time.Time{}, false
	}
	// Status times are stored to the second, truncated: a second more keeps the
	// wait at least the backoff.
	last := st.History[0]
	end := last.StartTime.Time.Add(time.Second)
	if last.Duration != nil {
		end = end.Add(last.Duration.Duration)
	}
	return end.Add(backoff(failures, r.retryBase(), max(r.interval(obj), maxInstallBackoff))), true
}

// installFailedReason is the reason of the last failed install: Timeout when
// nixos-anywhere ran out of --install-timeout, else InstallFailed.
func installFailedReason(obj *nio.NixosConfiguration) string {
	if c := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionInstalled); c != nil && c.Reason == ReasonTimeout {
		return ReasonTimeout
	}
	return ReasonInstallFailed
}

// installFailedMessage is the Installed condition's message (why it failed).
func installFailedMessage(obj *nio.NixosConfiguration) string {
	if c := meta.FindStatusCondition(obj.Status.Conditions, nio.ConditionInstalled); c != nil {
		msg, _, _ := strings.Cut(c.Message, "; next attempt after ")
		return msg
	}
	return "Install failed"
}

// installedAlready asks the host itself: our agent answering means NIO installed or
// adopted it; otherwise the marker file, over SSH.
func (r *NixosConfigurationReconciler) installedAlready(ctx context.Context, host host.Host) (bool, string, error) {
	if p := host.Probe(ctx); p.AgentReachable {
		return true, "nio-agent answers", nil
	}
	present, err := host.InstallMarkerPresent(ctx)
	if err != nil {
		return false, "", err
	}
	if present {
		return true, "marker " + install.MarkerPath + " present", nil
	}
	return false, "", nil
}

func (r *NixosConfigurationReconciler) runInstall(ctx context.Context, sw *statusWriter, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource, reinstall string) (bool, outcome.Success, error) {
	target, err := parseFlake(obj.Spec.Flake)
	if err != nil {
		return false, outcome.Success{}, outcome.Stalled(ReasonInvalidConfig, "%v", err)
	}
	key, err := host.SSHKey(ctx, r.Client, m)
	if err != nil {
		return false, outcome.Success{}, err
	}
	if r.PKI == nil || r.Installer == nil {
		return false, outcome.Success{}, outcome.Stalled(ReasonInvalidConfig, "fullInstall is not available: the operator runs without an installer")
	}
	ident, err := r.PKI.IssueMachineServer(m.Namespace, m.Name)
	if err != nil {
		return false, outcome.Success{}, fmt.Errorf("issue agent certificate: %w", err)
	}
	dir, err := os.MkdirTemp("", "nio-install-")
	if err != nil {
		return false, outcome.Success{}, err
	}
	defer os.RemoveAll(dir)
	if err := unpackArchive(src.archive.Data, dir); err != nil {
		return false, outcome.Success{}, fmt.Errorf("unpack source for nixos-anywhere: %w", err)
	}

	started := r.now()
	obj.Status.LastAttemptedCommit = src.commit
	setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionInstalled, metav1.ConditionFalse, ReasonInstalling,
		fmt.Sprintf("Installing revision %s on Machine %s with nixos-anywhere", revision(obj.Spec.Ref, src.commit), m.Name))
	r.summary(obj).Progressing(ReasonInstalling, "Installing with nixos-anywhere")
	if err := sw.guard(ctx, obj); err != nil {
		return false, outcome.Success{}, err
	}

	logger := log.FromContext(ctx)
	opLog := r.installLog(obj, src.commit, started)
	port := int(m.Spec.SSHPort)
	if port == 0 {
		port = 22
	}
	user := m.Spec.SSHUser
	if user == "" {
		user = "root"
	}
	res, runErr := r.Installer.Run(ctx, install.Request{
		Namespace: m.Namespace, Machine: m.Name, Configuration: obj.Name, Commit: src.commit,
		SourceDir: dir, FlakeDir: target.FlakeDir, FlakeAttr: target.FlakeAttr,
		User: user, Host: m.Spec.IPAddress, Port: port, SSHPrivateKey: key,
		AgentTLS:         install.AgentTLS{CA: ident.CAPEM, Cert: ident.CertPEM, Key: ident.KeyPEM},
		KexecURL:         obj.Spec.KexecImage,
		FacterReportPath: src.facterPath,
		OnLine: func(l string) {
			l = redact(l, src.secrets)
			opLog.Line(l)
			logger.V(1).Info("nixos-anywhere", "line", l)
		},
	})
	endInstallLog(opLog, runErr, src.secrets)
	if reinstall != "" {
		obj.Status.LastHandledReinstallAt = reinstall
	}
	entry := nio.HistoryEntry{
		Commit: src.commit, Action: "install", Transport: nio.TransportInstall, StartTime: metav1.NewTime(started),
		Duration: &metav1.Duration{Duration: r.now().Sub(started).Round(time.Millisecond)}, SourceDigest: src.archive.Digest,
	}
	if runErr != nil {
		for i := range res.LogTail {
			res.LogTail[i] = redact(res.LogTail[i], src.secrets)
		}
		entry.Result, entry.Message = nio.ResultFailed, truncate(redact(runErr.Error(), src.secrets), 512)
		pushHistory(&obj.Status, entry)
		msg := fmt.Sprintf("Installing revision %s on Machine %s failed: %s", revision(obj.Spec.Ref, src.commit), m.Name, entry.Message)
		reason := ReasonInstallFailed
		if errors.Is(runErr, install.ErrTimeout) {
			reason = ReasonTimeout
		}
		setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionInstalled, metav1.ConditionFalse, reason, msg)
		r.Metrics.observeApply(obj, transport.ApplyResult{Transport: nio.TransportInstall, Outcome: transport.OutcomeFailed}, r.now().Sub(started))
		next, _ := r.nextInstallAttempt(obj, src)
		return false, outcome.Success{}, &outcome.Generic{Reason: reason, Err: errors.New(msg),
			RequeueAfter: max(next.Sub(r.now()), r.retryBase()), Action: "Install", Note: eventNote(msg, res.LogTail)}
	}

	// nixos-anywhere installed the system of this commit: it is applied.
	now := r.now()
	entry.Result = nio.ResultSucceeded
	pushHistory(&obj.Status, entry)
	st := &obj.Status
	st.FullInstallCompleted, st.InstalledTime = true, &metav1.Time{Time: now}
	st.AppliedCommit, st.AppliedCommitShort, st.LastAppliedTime = src.commit, shortCommit(src.commit), &metav1.Time{Time: now}
	st.AppliedSourceDigest, st.AppliedSpecGeneration, st.TargetMachine = src.archive.Digest, obj.Generation, m.Name
	st.AppliedSecretsDigest = "" // nixos-anywhere delivers no secrets: the first switch does
	msg := fmt.Sprintf("Installed revision %s on Machine %s with nixos-anywhere", revision(obj.Spec.Ref, src.commit), m.Name)
	setCondition(&st.Conditions, obj.Generation, nio.ConditionInstalled, metav1.ConditionTrue, ReasonInstalled, msg)
	setCondition(&st.Conditions, obj.Generation, nio.ConditionApplied, metav1.ConditionTrue, ReasonSucceeded, msg)
	r.Metrics.observeApply(obj, transport.ApplyResult{Transport: nio.TransportInstall, Outcome: transport.OutcomeSucceeded}, now.Sub(started))
	// The Machine controller takes the generated host key's fingerprint, with what was
	// applied, from this status.
	fp, err := hostKeyFingerprint(res.HostPublicKey)
	st.InstalledHostKeyFingerprint = fp
	if err != nil {
		return false, outcome.Success{}, err
	}
	r.event(obj, corev1.EventTypeNormal, ReasonInstalled, "Install", msg)
	return false, outcome.Success{Reason: ReasonSucceeded, Message: "Applied revision " + revision(obj.Spec.Ref, src.commit),
		RequeueAfter: r.interval(obj)}, nil
}

// hostKeyFingerprint is the SHA256 fingerprint of the host key the operator
// generated for a new system ("" when there is none), so SSH trusts it without
// trust on first use.
func hostKeyFingerprint(hostKey string) (string, error) {
	if hostKey == "" {
		return "", nil
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostKey))
	if err != nil {
		return "", fmt.Errorf("installed host key: %w", err)
	}
	return ssh.FingerprintSHA256(pub), nil
}

// unpackArchive writes a rendered archive into dir (for nixos-anywhere, which reads
// the flake from a local directory). Archives are the operator's own; paths are still
// checked.
func unpackArchive(data []byte, dir string) error {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(filepath.FromSlash(h.Name))
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, ".."+string(filepath.Separator)) {
			return fmt.Errorf("archive entry %q escapes the tree", h.Name)
		}
		p := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(h.Mode)&0o777)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, tr); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("archive entry %q has unsupported type %c", h.Name, h.Typeflag)
		}
	}
}
