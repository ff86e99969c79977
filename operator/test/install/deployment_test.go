package install

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// operatorFlags returns the flag names nio-operator defines, read from its source
// (flag.X in main.go, fs.X where a file binds a group of flags), so a Deployment
// argument that names no flag (a rename, a typo) fails here rather than in a
// crash-looping pod.
func operatorFlags(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(env.Root, "operator", "cmd", "nio-operator", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	flags := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`(?:flag|fs)\.\w+\((?:&[\w.]+,\s*)?"([a-z][a-z0-9-]*)"`).FindAllSubmatch(src, -1) {
			flags[string(m[1])] = true
		}
	}
	if !flags["leader-elect"] || !flags["health-probe-bind-address"] {
		t.Fatalf("could not read nio-operator's flags from main.go (found %v)", flags)
	}
	return flags
}

// imageUID is the numeric USER of the Dockerfile's runtime stage.
func imageUID(t *testing.T) int64 {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(env.Root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^USER (\d+)(?::\d+)?\s*$`).FindAllSubmatch(src, -1)
	if len(m) == 0 {
		t.Fatal("Dockerfile sets no numeric USER")
	}
	uid, err := strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return uid
}

// argValue returns the value of --name=value in args.
func argValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// portNumber resolves a probe port (number or container port name).
func portNumber(t *testing.T, c corev1.Container, p corev1.HTTPGetAction) int32 {
	t.Helper()
	if p.Port.StrVal == "" {
		return p.Port.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.Port.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("probe names port %q, which container %s does not declare", p.Port.StrVal, c.Name)
	return 0
}

// checkDeployment holds the operator's Deployment to what the usage guide and the
// design promise: found by app=nixos-operator, probed, bounded, unprivileged, running
// flags nio-operator has.
func checkDeployment(t *testing.T, d *appsv1.Deployment, wantImage string, webhook bool) {
	t.Helper()
	if d.Labels["app"] != "nixos-operator" || d.Spec.Selector.MatchLabels["app"] != "nixos-operator" ||
		d.Spec.Template.Labels["app"] != "nixos-operator" {
		t.Errorf("app=nixos-operator missing (kubectl logs -l app=nixos-operator finds nothing): labels %v, selector %v, pod labels %v",
			d.Labels, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
	}
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName != operatorSA {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, operatorSA)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Fatalf("pod securityContext %+v: want runAsNonRoot, a fixed runAsUser and seccomp RuntimeDefault", psc)
	}
	if uid := imageUID(t); *psc.RunAsUser != uid {
		t.Errorf("runAsUser %d, but the Dockerfile's USER is %d", *psc.RunAsUser, uid)
	}

	emptyDirs := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.EmptyDir == nil {
			t.Errorf("volume %s is not an emptyDir", v.Name)
		}
		emptyDirs[v.Name] = true
	}
	all := append(append([]corev1.Container{}, pod.InitContainers...), pod.Containers...)
	for _, c := range all {
		if c.Image != wantImage {
			t.Errorf("container %s image %q, want %q", c.Name, c.Image, wantImage)
		}
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
			t.Errorf("container %s securityContext %+v: want no privilege escalation, read-only root, capabilities dropped", c.Name, sc)
		}
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, lim := c.Resources.Requests[res], c.Resources.Limits[res]
			if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
				t.Errorf("container %s %s: request %s, limit %s; want both, request <= limit", c.Name, res, req.String(), lim.String())
			}
		}
		for _, m := range c.VolumeMounts {
			if !emptyDirs[m.Name] {
				t.Errorf("container %s mounts %s, not one of the pod's emptyDirs", c.Name, m.Name)
			}
		}
	}

	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want the operator alone", len(pod.Containers))
	}
	c := pod.Containers[0]
	flags := operatorFlags(t)
	for _, a := range c.Args {
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !strings.HasPrefix(a, "--") || !flags[name] {
			t.Errorf("argument %q is not a flag of nio-operator", a)
		}
	}
	if !slices.Contains(c.Args, "--leader-elect") {
		t.Errorf("args %v: want --leader-elect", c.Args)
	}
	probeAddr, _ := argValue(c.Args, "health-probe-bind-address")
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe %+v: want GET %s", p.name, p.probe, p.path)
			continue
		}
		if port := portNumber(t, c, *p.probe.HTTPGet); port != 8081 || probeAddr != ":8081" {
			t.Errorf("%s probe on port %d, operator serves probes on %q; want 8081 and :8081", p.name, port, probeAddr)
		}
	}
	mounts := map[string]bool{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = true
	}
	cache, ok := argValue(c.Args, "source-cache-dir")
	if !ok || !mounts["/tmp"] || !mounts[filepath.Dir(cache)] {
		t.Errorf("mounts %v, --source-cache-dir %q: want /tmp and the source cache on emptyDirs", mounts, cache)
	}
	podNamespace := false
	for _, e := range c.Env {
		podNamespace = podNamespace || (e.Name == "POD_NAMESPACE" && e.ValueFrom != nil &&
			e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace")
	}
	if !podNamespace {
		t.Errorf("env %+v: want POD_NAMESPACE from metadata.namespace", c.Env)
	}

	addr, on := argValue(c.Args, "webhook-bind-address")
	hasPort := false
	for _, p := range c.Ports {
		hasPort = hasPort || (p.Name == "webhook" && p.ContainerPort == 9292)
	}
	if webhook != on || (webhook && (addr != ":9292" || !hasPort)) || (!webhook && hasPort) {
		t.Errorf("webhook receiver: args %v, ports %+v; want it on :9292 = %v", c.Args, c.Ports, webhook)
	}
}
