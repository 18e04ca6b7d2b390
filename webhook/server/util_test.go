package server

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

func metaGVK(g, v, k string) metav1.GroupVersionKind {
	return metav1.GroupVersionKind{Group: g, Version: v, Kind: k}
}

func metaGVR(g, v, r string) metav1.GroupVersionResource {
	return metav1.GroupVersionResource{Group: g, Version: v, Resource: r}
}

func ptrTo[T any](v T) *T { return &v }
