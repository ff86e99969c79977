package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/source"
)

// FacterReportKey is the key of the nixos-facter report in a Machine's facts ConfigMap.
const FacterReportKey = "facter.json"

// resolvedSource is the outcome of the source phase of a pass.
type resolvedSource struct {
	repo    *source.Repo
	commit  string
	archive render.Archive
	// secrets are the values that must never reach a log, event or status.
	secrets []string
	// secretFiles are the secretRef additional files: delivered to the host beside
	// the archive, never in it (render/secrets.go). secretsDigest identifies them
	// (keyed; "" when there are none).
	secretFiles   []render.Secret
	secretsDigest string
	// facterPath is the path of an additional file asking for the facter report when
	// the Machine has none yet (nixos-anywhere generates it at install).
	facterPath string
	// waitingFor says what the pass waits for before it can render ("" when ready).
	waitingFor string
	// partial is set when only the commit and digests are known (renderMemo): the
	// archive, the secrets and their values were not read. A pass that applies
	// resolves again in full.
	partial bool
}

// How a pass resolves its source (resolve).
type resolveMode int

const (
	// resolveMemoized may take the digests from the render memo; the refs are
	// listed at most once per interval for the repository.
	resolveMemoized resolveMode = iota
	// resolveFull reads and renders everything (a pass about to apply), with the
	// same listing.
	resolveFull
	// resolveFresh is resolveFull with a new listing (a forced pass).
	resolveFresh
)

// resolve resolves spec.ref, collects the additional files and renders the archive,
// setting status.latestCommit and the SourceReady condition.
func (r *NixosConfigurationReconciler) resolve(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, mode resolveMode) (*resolvedSource, error) {
	var src *resolvedSource
	var err error
	switch mode {
	case resolveMemoized:
		src, err = r.resolveMemo(ctx, obj, m)
	case resolveFull:
		src, err = r.resolveSource(ctx, obj, m, r.interval(obj))
	default:
		src, err = r.resolveSource(ctx, obj, m, 0)
	}
	if err != nil {
		reason := ReasonSourceFailed
		var st *outcome.Stalling
		if errors.As(err, &st) {
			reason = st.Reason
		}
		setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionSourceReady, metav1.ConditionFalse, reason, err.Error())
		return nil, err
	}
	if src.waitingFor == "" {
		setCondition(&obj.Status.Conditions, obj.Generation, nio.ConditionSourceReady, metav1.ConditionTrue, ReasonSourceReady,
			fmt.Sprintf("Rendered revision %s (%s)", revision(obj.Spec.Ref, src.commit), src.archive.Digest))
	}
	return src, nil
}

// resolveSource resolves with a listing of the refs up to maxAge old, and reads and
// renders everything.
func (r *NixosConfigurationReconciler) resolveSource(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, maxAge time.Duration) (*resolvedSource, error) {
	src := &resolvedSource{}
	var creds map[string][]byte
	if ref := obj.Spec.CredentialsRef; ref != nil {
		s, err := r.secret(ctx, obj.Namespace, ref.Name)
		if err != nil {
			return nil, err
		}
		creds = s.Data
		for _, v := range s.Data {
			src.secrets = append(src.secrets, string(v))
		}
	}
	repo, err := r.Sources.Repo(obj.Spec.GitRepo, creds)
	if err != nil {
		return nil, err
	}
	src.repo = repo
	commit, err := r.resolveRef(ctx, obj, repo, maxAge)
	if err != nil {
		return nil, err
	}
	src.commit = commit

	files, err := r.additionalFiles(ctx, obj, m, src)
	if err != nil || src.waitingFor != "" {
		return src, err
	}
	if err := render.CheckSecrets(src.secretFiles); err != nil {
		return nil, secretsError(err)
	}
	paths := make([]string, len(src.secretFiles))
	for i, s := range src.secretFiles {
		paths[i] = s.Path
	}
	src.archive, err = r.Sources.Render(ctx, repo, commit, files, paths)
	if err != nil {
		return nil, secretsError(sourceError(err))
	}
	if len(src.secretFiles) > 0 {
		src.secretsDigest = render.SecretsDigest(r.secretsDigestKey(), src.secretFiles)
	}
	return src, nil
}

// resolveRef resolves spec.ref in repo with a listing of the refs up to maxAge old
// (shared by every configuration of the repository; at least --source-min-interval),
// and records it as status.latestCommit.
func (r *NixosConfigurationReconciler) resolveRef(ctx context.Context, obj *nio.NixosConfiguration, repo *source.Repo, maxAge time.Duration) (string, error) {
	ref := obj.Spec.Ref
	if ref == "" {
		ref = "main"
	}
	commit, err := repo.ResolveWithin(ctx, ref, maxAge)
	if err != nil {
		return "", sourceError(fmt.Errorf("resolve %s: %w", ref, err))
	}
	obj.Status.LatestCommit = commit
	return commit, nil
}

// sourceError classifies a source failure: credentials, a missing repository or ref
// are configuration errors (fixed by a change the watches see); the network is retried.
func sourceError(err error) error {
	switch {
	case errors.Is(err, source.ErrAuth), errors.Is(err, source.ErrInvalidCredentials):
		return &outcome.Stalling{Reason: ReasonAuthFailed, Err: err}
	case errors.Is(err, source.ErrNotFound), errors.Is(err, source.ErrRefNotFound), errors.Is(err, source.ErrInvalidURL):
		return &outcome.Stalling{Reason: ReasonSourceNotFound, Err: err}
	}
	return err
}

// additionalFiles reads the contents of spec.additionalFiles.
func (r *NixosConfigurationReconciler) additionalFiles(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine, src *resolvedSource) ([]render.File, error) {
	var files []render.File
	for _, f := range obj.Spec.AdditionalFiles {
		v := f.Value
		switch {
		case v.Inline != nil:
			files = append(files, render.File{Path: f.Path, Content: []byte(*v.Inline)})
		case v.SecretRef != nil:
			data, err := r.secretValue(ctx, obj.Namespace, v.SecretRef)
			if err != nil {
				return nil, fmt.Errorf("additional file %s: %w", f.Path, err)
			}
			mode, err := render.ParseMode(f.Mode)
			if err != nil {
				return nil, outcome.Stalled(ReasonInvalidConfig, "additional file %s: %v", f.Path, err)
			}
			src.secrets = append(src.secrets, string(data))
			src.secretFiles = append(src.secretFiles, render.Secret{Path: f.Path, Content: data, Mode: mode, Owner: f.Owner, Group: f.Group})
		case v.NixosFacter != nil && *v.NixosFacter:
			report, err := r.facterReport(ctx, m)
			if err != nil {
				return nil, fmt.Errorf("additional file %s: %w", f.Path, err)
			}
			if report == nil {
				if obj.Spec.FullInstall && !obj.Status.FullInstallCompleted {
					src.facterPath = f.Path // nixos-anywhere generates it
					continue
				}
				src.waitingFor = fmt.Sprintf("Waiting for Machine %s's nixos-facter report (additional file %s)", m.Name, f.Path)
				return nil, nil
			}
			files = append(files, render.File{Path: f.Path, Content: report})
		}
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// secretValue reads one key of a Secret; without a key the Secret must hold exactly one.
func (r *NixosConfigurationReconciler) secretValue(ctx context.Context, namespace string, ref *nio.SecretKeyReference) ([]byte, error) {
	s, err := r.secret(ctx, namespace, ref.Name)
	if err != nil {
		return nil, err
	}
	if ref.Key != "" {
		v, ok := s.Data[ref.Key]
		if !ok {
			return nil, outcome.Stalled(ReasonInvalidConfig, "Secret %s has no key %q", ref.Name, ref.Key)
		}
		return v, nil
	}
	if len(s.Data) != 1 {
		keys := make([]string, 0, len(s.Data))
		for k := range s.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return nil, outcome.Stalled(ReasonInvalidConfig, "Secret %s has %d keys %v: name one with secretRef.key", ref.Name, len(keys), keys)
	}
	for _, v := range s.Data {
		return v, nil
	}
	return nil, nil
}

// facterReport returns the Machine's last nixos-facter report, or nil when it has none.
func (r *NixosConfigurationReconciler) facterReport(ctx context.Context, m *nio.Machine) ([]byte, error) {
	if m.Status.Facts == nil || m.Status.Facts.ReportConfigMap == "" {
		return nil, nil
	}
	cm := &corev1.ConfigMap{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Status.Facts.ReportConfigMap}, cm); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("get facts ConfigMap: %w", err)
	}
	if report, ok := cm.Data[FacterReportKey]; ok {
		return []byte(report), nil
	}
	return nil, nil
}
