package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/homystack/nio/operator/internal/controller"
	"github.com/homystack/nio/operator/internal/webhook"
)

// setupWebhook serves the push webhook receiver on its own address, when enabled.
// It runs on the leader only: the trigger queues into this process's controller.
func setupWebhook(mgr ctrl.Manager, o options, trigger *controller.Trigger) error {
	if o.webhookAddr == "" {
		return nil
	}
	reader := mgr.GetAPIReader()
	key := types.NamespacedName{Namespace: o.namespace, Name: o.webhookSecret}
	recv, err := webhook.NewReceiver(webhook.Options{
		// Read on every delivery, so a rotated Secret applies at the next push.
		Secret: func(ctx context.Context) ([]byte, error) {
			s := &corev1.Secret{}
			if err := reader.Get(ctx, key, s); err != nil {
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
		Registerer: metrics.Registry,
		Logger:     mgr.GetLogger().WithName("webhook"),
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
