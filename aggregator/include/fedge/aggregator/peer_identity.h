// Binds a mutual-TLS peer to the agent it claims to be (issue 10 item 8).
//
// With --tls-client-ca the gRPC listener accepts only connections whose client
// certificate the job CA signed; that proves the peer holds *some* agent's key.
// These functions make it that agent's key: every request's RequestHeader.agent_id
// must equal the identity in the verified certificate of the connection it came on.
// A Join as another agent is refused, and so is any request on an existing session
// from a connection with another identity (the session belongs to the agent id in the
// header, which must be the certificate's), so a stolen session id is useless
// without that agent's key too.
//
// Identity in a certificate (fedge/pki.h writes it, for the operator and `fedge run`):
// the one URI subject alternative name starting with pki::kAgentUriPrefix,
// percent-decoded (ids of any length and character); a certificate without such a name
// is identified by its subject common name (certificates made elsewhere for
// `fedge-aggregator --tls-client-ca`).
#pragma once

#include <string>

#include "fedge/status.h"

namespace grpc {
class ServerContextBase;
}

namespace fedge::aggregator {

// The agent id a PEM certificate names. INVALID_ARGUMENT when it is unreadable, holds
// two pki::kAgentUriPrefix names, has a malformed percent escape in one, or names no one.
StatusOr<std::string> AgentIdFromCertificate(const std::string& cert_pem);

// OK when the verified client certificate of the call's connection names
// `claimed_agent_id`. PERMISSION_DENIED naming both ids when it names another agent;
// UNAUTHENTICATED when the connection has no verified client certificate (the server
// does not require one: call this only when it does) or the certificate names no one.
// Thread-safe; reads only `ctx`.
Status CheckPeerIdentity(const grpc::ServerContextBase& ctx, const std::string& claimed_agent_id);

}  // namespace fedge::aggregator
