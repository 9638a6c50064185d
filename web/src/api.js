// The JSON API of `sterling serve` (see docs in notes/web-api.md). Every failure becomes an ApiError whose
// message is one plain sentence a person can act on; `field` names the form field it concerns, if any.

export class ApiError extends Error {
  constructor(message, { status = 0, field = null, body = null } = {}) {
    super(message);
    this.status = status;
    this.field = field;
    this.body = body;
  }
}

async function request(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError("The Sterling server cannot be reached. Is `sterling serve` still running?");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    let message = data?.error;
    if (!message) {
      if (response.status === 502) message = "The server cannot reach the blockchain node. Is the chain running?";
      else if (response.status === 413) message = "The file is larger than the server accepts.";
      else if (response.status === 404) message = "Not found.";
      else message = `The server answered ${response.status} ${response.statusText}.`;
    }
    throw new ApiError(message, { status: response.status, field: data?.field ?? null, body: data });
  }
  return data;
}

export const api = {
  get: (path) => request("GET", path),
  post: (path, body) => request("POST", path, body),
};

/** Query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

let accountsCache = null;
/** The local chain's development accounts, fetched once per page load. */
export async function accounts() {
  accountsCache ??= api.get("/api/accounts").catch((e) => {
    accountsCache = null;
    throw e;
  });
  return accountsCache;
}
