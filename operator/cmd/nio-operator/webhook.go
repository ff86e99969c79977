package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/homystack/nio/operator/internal/controller"
	"github.com/homystack/nio/operator/internal/webhook"
)

// secretWait bounds a delivery's wait for the webhook Secret's cache to fill (just
// after a start, or while the API server is unreachable): past it, 503.
const secretWait = 5 * time.Second

// setupWebhook serves the push webhook receiver on its own address, when enabled.
// It runs on the leader only: the trigger queues into this process's controller.
func setupWebhook(mgr ctrl.Manager, o options, trigger *controller.Trigger) error {
	if o.webhookAddr == "" {
		return nil
	}
	trusted, err := parsePrefixes(o.webhookTrustedProxies)
	if err != nil {
		return fmt.Errorf("--webhook-trusted-proxies: %w", err)
	}
	secrets, err := newSecretCache(mgr, o.namespace, o.webhookSecret)
	if err != nil {
		return err
	}
	key := types.NamespacedName{Namespace: o.namespace, Name: o.webhookSecret}
	recv, err := webhook.NewReceiver(webhook.Options{
		// Read from the cache on every delivery: a rotated Secret applies as soon as
		// its watch event arrives, and a delivery costs the API server nothing.
		Secret: func(ctx context.Context) ([]byte, error) {
			ctx, cancel := context.WithTimeout(ctx, secretWait)
			defer cancel()
			s := &corev1.Secret{}
			if err := secrets.Get(ctx, key, s); err != nil {
				return nil, fmt.Errorf("webhook Secret %s: %w", key, err)
			}
			token := s.Data["token"]
			if len(token) == 0 {
				return nil, errors.New("webhook Secret " + key.String() + " has no key token")
			}
			return token, nil
		},
		Trigger: func(ctx context.Context, urls []string) (int, error) {
			set := webhook.NewRepoSet(urls)
			return trigger.Repos(ctx, set.Contains)
		},
		RefusedBurst:    o.webhookRefusedBurst,
		RefusedInterval: o.webhookRefusedInterval,
		TrustedProxies:  trusted,
		ReplayWindow:    o.webhookReplayWindow,
		Registerer:      metrics.Registry,
		Logger:          mgr.GetLogger().WithName("webhook"),
	})
	if err != nil {
		return err
	}
	return mgr.Add(&manager.Server{
		Name: "webhook",
		Server: &http.Server{
			Addr: o.webhookAddr, Handler: recv, ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10,
		},
		OnlyServeWhenLeader: true,
	})
}

// newSecretCache is a cache of its own that lists and watches the webhook Secret
// alone: a field selector on its name in the operator's namespace, which the Role's
// resourceNames allow (the manager's cache must not hold every Secret of the
// namespace, nor need to list them). A missing Secret is answered from the cache
// too, so no delivery, signed or not, reaches the API server.
func newSecretCache(mgr ctrl.Manager, namespace, name string) (cache.Cache, error) {
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		HTTPClient:        mgr.GetHTTPClient(),
		Scheme:            mgr.GetScheme(),
		Mapper:            mgr.GetRESTMapper(),
		DefaultNamespaces: map[string]cache.Config{namespace: {}},
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Field: fields.OneTermEqualSelector("metadata.name", name)},
		},
		// Nothing else is read through it; a mistake must not start an informer.
		ReaderFailOnMissingInformer: true,
	})
	if err != nil {
		return nil, fmt.Errorf("webhook Secret cache: %w", err)
	}
	// Created now, its list and watch start with the cache, before the first delivery.
	if _, err := c.GetInformer(context.Background(), &corev1.Secret{}); err != nil {
		return nil, fmt.Errorf("webhook Secret informer: %w", err)
	}
	return c, mgr.Add(c)
}

// parsePrefixes reads a comma-separated list of CIDRs or addresses (one address is
// a /32 or /128).
func parsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
