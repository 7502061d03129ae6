"""The few Kubernetes API calls nmi makes, through the real `kubernetes` ApiClient, without its generated API classes.

nmi only ever reads raw JSON (`_preload_content=False`) and projects it itself (`projection`), yet importing the
generated `CoreV1Api` alone loads ~250 pydantic models and validators: ~20 MiB resident and a few tenths of a
second at start, a quarter of nmi's memory (`AppsV1Api` adds ~4 MiB in standard mode). `KubeApi` offers the same
methods, with the same arguments, for the calls nmi makes, and does for each what the generated method does with
`_preload_content=False`: the request is built by the ApiClient (`param_serialize`: default headers and User-Agent,
bearer token / client certificate, path parameters quoted, query encoded) and sent by its REST client (urllib3
pool, TLS, timeouts, retries); a 2xx answer comes back as the raw response, anything else raises `ApiException`
as the generated code raises it.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException

# Keyword arguments nmi passes → the API's query parameter names, in the order the generated methods send them.
_QUERY = {
    "allow_watch_bookmarks": "allowWatchBookmarks",
    "_continue": "continue",
    "field_selector": "fieldSelector",
    "label_selector": "labelSelector",
    "limit": "limit",
    "resource_version": "resourceVersion",
    "timeout_seconds": "timeoutSeconds",
    "watch": "watch",
}
JSON = "application/json"


class KubeApi:
    """The generated clients' method names and arguments, for the calls nmi makes; raw responses only."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    # -- lists and watches (informers, live lookups) --------------------------------------------------------

    def list_pod_for_all_namespaces(self, **options: Any) -> Any:
        return self._call("GET", "/api/v1/pods", {}, options)

    def list_service_account_for_all_namespaces(self, **options: Any) -> Any:
        return self._call("GET", "/api/v1/serviceaccounts", {}, options)

    def list_namespaced_replica_set(self, namespace: str, **options: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/namespaces/{namespace}/replicasets", {"namespace": namespace},
                          options)

    def list_namespaced_deployment(self, namespace: str, **options: Any) -> Any:
        return self._call("GET", "/apis/apps/v1/namespaces/{namespace}/deployments", {"namespace": namespace},
                          options)

    def list_cluster_custom_object(self, group: str, version: str, plural: str, **options: Any) -> Any:
        return self._call("GET", "/apis/{group}/{version}/{plural}",
                          {"group": group, "version": version, "plural": plural}, options)

    # -- single objects -------------------------------------------------------------------------------------

    def read_namespaced_secret(self, name: str, namespace: str, **options: Any) -> Any:
        return self._call("GET", "/api/v1/namespaces/{namespace}/secrets/{name}",
                          {"name": name, "namespace": namespace}, options)

    def read_node(self, name: str, **options: Any) -> Any:
        return self._call("GET", "/api/v1/nodes/{name}", {"name": name}, options)

    def patch_node(self, name: str, body: Any, **options: Any) -> Any:
        return self._call("PATCH", "/api/v1/nodes/{name}", {"name": name}, options, body=body)

    def create_namespaced_event(self, namespace: str, body: Any, **options: Any) -> Any:
        return self._call("POST", "/api/v1/namespaces/{namespace}/events", {"namespace": namespace}, options,
                          body=body)

    def create_namespaced_service_account_token(self, name: str, namespace: str, body: Any, **options: Any) -> Any:
        return self._call("POST", "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                          {"name": name, "namespace": namespace}, options, body=body)

    # -- the one request path -------------------------------------------------------------------------------

    def _call(self, method: str, path: str, path_params: dict[str, str], options: dict[str, Any], *,
              body: Any = None) -> Any:
        options = dict(options)
        if options.pop("_preload_content", False):
            raise ValueError("KubeApi answers raw responses only (_preload_content=False)")
        timeout = options.pop("_request_timeout", None)
        content_type = options.pop("_content_type", None)
        unknown = sorted(set(options) - set(_QUERY))
        if unknown:  # a typo must not silently drop a selector (and widen what nmi lists)
            raise TypeError(f"unexpected arguments: {', '.join(unknown)}")
        query = [(wire, options[name]) for name, wire in _QUERY.items() if options.get(name) is not None]
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type or JSON
        request = self.api_client.param_serialize(
            method=method, resource_path=path, path_params=path_params, query_params=query, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        response = self.api_client.call_api(*request, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            response.read()
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.response
