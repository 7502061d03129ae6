"""Tokens for identities: nmi's cache in front of IMDS and Azure AD.

    service.py            TokenService: cache keys, and what each identity type fetches (IMDS, client
                          credentials, workload identity federation)
    config.py             its settings, grouped in frozen objects
    cache.py              TokenCache: hits on the loop, single flight, refresh ahead, LRU, forgetting
    limits.py             RetryPolicy (nmi.backoff), UpstreamGate (IMDS concurrency and rate)
    failures.py           foreign failures -> UpstreamFailure -> NmiError, in one place
    msal_adapter.py       the only module importing msal: its thread pool and application cache
    msal_http.py          the requests-based HTTP clients handed to MSAL, and token answers read
    credential_policy.py  what an identity may point nmi at (Secret namespace, authority host)
    credentials.py        Secret data -> client secret / certificate, parsed off the loop (PKCS#12 in a process)
    assertions.py         ServiceAccount tokens for federation (TokenRequest, renewed at 80 %)

Nothing is imported here: the PKCS#12 parser process imports nmi.tokens.credentials and nothing else of nmi's.
"""
