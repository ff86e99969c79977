package controller

import (
	"crypto/sha256"
	"errors"

	"github.com/homystack/nio/operator/internal/outcome"
	"github.com/homystack/nio/operator/internal/render"
	"github.com/homystack/nio/operator/internal/transport"
)

// secretsError gives the secrets' own configuration errors their reasons (terminal:
// nothing is sent to the host until the spec or the Secret changes).
func secretsError(err error) error {
	var st *outcome.Stalling
	switch {
	case errors.Is(err, render.ErrSecretConflict):
		return &outcome.Stalling{Reason: ReasonSecretPathConflict, Err: err}
	case errors.Is(err, render.ErrSecretTooLarge):
		return &outcome.Stalling{Reason: ReasonSecretTooLarge, Err: err}
	case errors.Is(err, render.ErrInvalidPath) && !errors.As(err, &st):
		return &outcome.Stalling{Reason: ReasonInvalidConfig, Err: err}
	}
	return err
}

// secretsDigestKey keys status.appliedSecretsDigest. The digest is in the status,
// which more people may read than the Secrets: keyed with the operator's CA key, it
// lets nobody test guesses of a short password against it. Without a CA (tests) the
// key is fixed, and the digest only as good as a plain hash.
func (r *NixosConfigurationReconciler) secretsDigestKey() []byte {
	if r.PKI != nil && r.PKI.CA() != nil {
		if pem, err := r.PKI.CA().KeyPEM(); err == nil {
			sum := sha256.Sum256(append([]byte("nio.homystack.com/secrets-digest/v1\x00"), pem...))
			return sum[:]
		}
	}
	return []byte("nio.homystack.com/secrets-digest/v1 (no CA)")
}

// transportSecrets is what the host's secrets directory must hold after the
// operation: the configuration's secretRef files, or none for its removal (the
// configuration that owned them is going away).
func transportSecrets(src *resolvedSource, op operation) *transport.Secrets {
	set := &transport.Secrets{}
	if op.label == "remove" {
		return set
	}
	set.Digest = src.secretsDigest
	for _, s := range src.secretFiles {
		set.Files = append(set.Files, transport.SecretFile{Path: s.Path, Data: s.Content, Mode: s.Mode, Owner: s.Owner, Group: s.Group})
	}
	return set
}
