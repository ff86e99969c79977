package main

import (
	"encoding/json"
	"net/http"
	"os"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

func fromMap(m map[string]any, into any) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}

// tokenOf reads the token of a kubeconfig tokenUser wrote.
func tokenOf(t *testing.T, kubeconfig string) string {
	t.Helper()
	kc, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo].Token
}

// rawLog asks the endpoint directly with token and returns the status.
func rawLog(t *testing.T, ep *logEndpoint, token, ns, name string) int {
	t.Helper()
	g := &globals{getenv: os.Getenv, operatorCA: ep.caFile}
	hc, err := g.directClient()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, ep.url+"/logs/"+ns+"/"+name, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
