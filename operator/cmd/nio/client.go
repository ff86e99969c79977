package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	nio "github.com/homystack/nio/api/v1alpha1"
)

// globals are the flags every command shares, and what they lead to.
type globals struct {
	streams
	getenv func(string) string

	kubeconfig, context, namespace string
	color                          string
	timeout                        time.Duration
	operatorNamespace              string
	operatorURL, operatorCA        string

	cfg  *rest.Config
	ns   string
	kube client.Client
}

func (g *globals) bind(root *cobra.Command) {
	f := root.PersistentFlags()
	f.StringVar(&g.kubeconfig, "kubeconfig", "", "Path of the kubeconfig file (default: $KUBECONFIG, ~/.kube/config).")
	f.StringVar(&g.context, "context", "", "The kubeconfig context to use.")
	f.StringVarP(&g.namespace, "namespace", "n", "", "Namespace (default: the context's).")
	f.StringVar(&g.color, "color", "auto", "Colour: auto (on a terminal, unless NO_COLOR is set), always or never.")
	f.DurationVar(&g.timeout, "request-timeout", 30*time.Second, "Bound of each request to the API server.")
	f.StringVar(&g.operatorNamespace, "operator-namespace", "nixos-operator-system", "Namespace of the operator's Service nio-operator-logs.")
	f.StringVar(&g.operatorURL, "operator-url", "", "Reach the log endpoint at this https:// URL instead of through the API server's service proxy (env NIO_OPERATOR_URL).")
	f.StringVar(&g.operatorCA, "operator-ca", "", "PEM file of the CA the log endpoint's certificate must chain to, with --operator-url (env NIO_OPERATOR_CA; default: the system's roots).")
}

// client connects to the API server with the user's kubeconfig.
func (g *globals) client() (client.Client, string, error) {
	if g.kube != nil {
		return g.kube, g.ns, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = g.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig: %w", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("kubeconfig namespace: %w", err)
	}
	if g.namespace != "" {
		ns = g.namespace
	}
	cfg.UserAgent = "nio/" + version
	c, err := client.New(cfg, client.Options{Scheme: scheme()})
	if err != nil {
		return nil, "", fmt.Errorf("client: %w", err)
	}
	g.cfg, g.ns, g.kube = cfg, ns, c
	return c, ns, nil
}

// ctx bounds one request.
func (g *globals) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, g.timeout)
}

// clockNow is the clock (tests replace it).
var clockNow = time.Now

func (g *globals) clock() time.Time { return clockNow() }

// colour says whether to write ANSI colours to out.
func (g *globals) colour() bool {
	switch g.color {
	case "always":
		return true
	case "never":
		return false
	}
	if g.getenv("NO_COLOR") != "" {
		return false
	}
	f, ok := g.out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// terminal says whether out is a terminal (progress lines are rewritten in place).
func (g *globals) terminal() bool {
	f, ok := g.out.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = nio.AddToScheme(s)
	return s
}
