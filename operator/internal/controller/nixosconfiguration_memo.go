package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/source"
)

// renderMemo remembers, per configuration, the inputs of its last complete render
// and what came out (digests only: no archive bytes, no Secret data). A pass whose
// inputs are unchanged — the same spec, commit and versions of every Secret and
// ConfigMap it reads — takes the digests from here instead of reading those objects
// from the API server; only if it then has something to do does it render for real
// (resolvedSource.partial). At fleet scale the idle passes (every configuration
// every interval) would otherwise read each facter report (50–500 KB) and Secret
// once per interval for nothing.
//
// The versions come from metadata-only caches (MetaReader): a Secret or ConfigMap
// changed since is another key, and its watch event queues the pass.
type renderMemo struct {
	mu      sync.Mutex
	entries map[types.NamespacedName]memoEntry
}

type memoEntry struct {
	key           string
	repo          *source.Repo
	commit        string
	digest        string
	secretsDigest string
}

func (m *renderMemo) get(k types.NamespacedName, key string) (memoEntry, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[k]
	return e, ok && e.key == key
}

func (m *renderMemo) put(k types.NamespacedName, e memoEntry) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries == nil {
		m.entries = map[types.NamespacedName]memoEntry{}
	}
	m.entries[k] = e
}

func (m *renderMemo) forget(k types.NamespacedName) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.entries, k)
}

// inputsKey identifies what a render of obj for Machine m reads besides the commit:
// the spec (its generation), the install state (a facter file nixos-anywhere
// generates), and the resourceVersion of each Secret and ConfigMap read. ok is false
// when a version is unknown (the object is missing, or not in the metadata cache
// yet): such a pass reads for real, and reports what is wrong.
func (r *NixosConfigurationReconciler) inputsKey(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine) (string, bool) {
	if r.MetaReader == nil {
		return "", false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%s gen %d install %t/%t machine %s\n", obj.Namespace, obj.Name, obj.Generation,
		obj.Spec.FullInstall, obj.Status.FullInstallCompleted, m.UID)
	version := func(kind, name string) bool {
		meta := &metav1.PartialObjectMetadata{}
		meta.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind(kind))
		if err := r.MetaReader.Get(ctx, types.NamespacedName{Namespace: obj.Namespace, Name: name}, meta); err != nil {
			return false
		}
		fmt.Fprintf(&b, "%s %s %s %s\n", kind, name, meta.UID, meta.ResourceVersion)
		return true
	}
	if ref := obj.Spec.CredentialsRef; ref != nil && !version("Secret", ref.Name) {
		return "", false
	}
	for _, f := range obj.Spec.AdditionalFiles {
		switch v := f.Value; {
		case v.SecretRef != nil:
			if !version("Secret", v.SecretRef.Name) {
				return "", false
			}
		case v.NixosFacter != nil && *v.NixosFacter:
			facts := m.Status.Facts
			if facts == nil || facts.ReportConfigMap == "" || !version("ConfigMap", facts.ReportConfigMap) {
				return "", false
			}
		}
	}
	sum := sha256.Sum256([]byte(b.String()))
	return hex.EncodeToString(sum[:]), true
}

// resolveMemo is resolveSource for a pass that may not need the archive: when the
// inputs are those of the last complete render, it lists the refs (shared, and at
// most once per interval) and, if the commit is unchanged too, returns the digests
// without reading anything else. partial is then set: full renders for real.
func (r *NixosConfigurationReconciler) resolveMemo(ctx context.Context, obj *nio.NixosConfiguration, m *nio.Machine) (*resolvedSource, error) {
	k := client.ObjectKeyFromObject(obj)
	key, ok := r.inputsKey(ctx, obj, m)
	if !ok {
		return r.resolveSource(ctx, obj, m, r.interval(obj))
	}
	if e, hit := r.memo.get(k, key); hit {
		// The repository is listed once per interval for all its configurations;
		// a commit that listing finds queues them all (Trigger.WatchSources).
		commit, err := r.resolveRef(ctx, obj, e.repo, r.interval(obj))
		if err != nil {
			return nil, err
		}
		if commit == e.commit {
			return &resolvedSource{repo: e.repo, commit: commit, archive: render.Archive{Digest: e.digest},
				secretsDigest: e.secretsDigest, partial: true}, nil
		}
	}
	src, err := r.resolveSource(ctx, obj, m, r.interval(obj))
	if err != nil || src.waitingFor != "" || src.facterPath != "" {
		r.memo.forget(k)
		return src, err
	}
	r.memo.put(k, memoEntry{key: key, repo: src.repo, commit: src.commit, digest: src.archive.Digest, secretsDigest: src.secretsDigest})
	return src, nil
}
