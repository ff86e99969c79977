package logserver

import (
	"context"
	"errors"
	"fmt"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// User is who a token belongs to, as the API server's TokenReview says.
type User struct {
	Name   string
	UID    string
	Groups []string
	Extra  map[string]authnv1.ExtraValue
}

// Reviewer asks the API server who holds a token and what they may do.
type Reviewer interface {
	// Authenticate returns the token's user; an error wrapping ErrUnauthenticated
	// when the API server does not accept the token.
	Authenticate(ctx context.Context, token string) (User, error)
	// MayRead says whether user may read the log of NixosConfiguration
	// namespace/name, and if not, why.
	MayRead(ctx context.Context, user User, namespace, name string) (bool, string, error)
}

// ErrUnauthenticated: the API server does not accept the token.
var ErrUnauthenticated = errors.New("token not accepted by the API server")

// KubeReviewer is the Reviewer of a cluster: a TokenReview and a SubjectAccessReview
// per request, each one API request (the operator's RBAC allows creating both).
type KubeReviewer struct {
	Client client.Client
}

// Authenticate creates a TokenReview. The token is sent to the API server only; it
// is never logged, nor part of an error.
func (k KubeReviewer) Authenticate(ctx context.Context, token string) (User, error) {
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token}}
	if err := k.Client.Create(ctx, tr); err != nil {
		return User{}, fmt.Errorf("TokenReview: %w", err)
	}
	if !tr.Status.Authenticated {
		if tr.Status.Error != "" {
			return User{}, fmt.Errorf("%w: %s", ErrUnauthenticated, tr.Status.Error)
		}
		return User{}, ErrUnauthenticated
	}
	u := tr.Status.User
	return User{Name: u.Username, UID: u.UID, Groups: u.Groups, Extra: u.Extra}, nil
}

// MayRead creates a SubjectAccessReview: may the user `get` that NixosConfiguration?
func (k KubeReviewer) MayRead(ctx context.Context, user User, namespace, name string) (bool, string, error) {
	extra := map[string]authzv1.ExtraValue{}
	for key, v := range user.Extra {
		extra[key] = authzv1.ExtraValue(v)
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: user.Name, UID: user.UID, Groups: user.Groups, Extra: extra,
		ResourceAttributes: &authzv1.ResourceAttributes{
			Verb: "get", Group: nio.GroupVersion.Group, Version: nio.GroupVersion.Version,
			Resource: Resource, Namespace: namespace, Name: name,
		},
	}}
	if err := k.Client.Create(ctx, sar); err != nil {
		return false, "", fmt.Errorf("SubjectAccessReview: %w", err)
	}
	if sar.Status.Allowed && !sar.Status.Denied {
		return true, "", nil
	}
	return false, sar.Status.Reason, nil
}

// Resource is what a log read is authorised as: `get` on the NixosConfiguration
// itself. The log is the redacted output whose last lines the configuration's
// events and history already carry, so whoever may read the object may read it.
const Resource = "nixosconfigurations"
