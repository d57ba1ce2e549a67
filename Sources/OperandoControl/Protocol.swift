import Foundation
import OperandoCore

/// The control socket protocol: a Unix stream socket carrying newline-delimited JSON.
///
/// Request: `{"v":1, "id":…, "cmd":"…", "args":{…}}` (`v` optional, defaults to 1; `id` any JSON
/// value, echoed back). Reply: `{"v":1, "id":…, "ok":true, "result":…}` or
/// `{"v":1, "id":…, "ok":false, "error":{"code":"…", "message":"…"}}`.
/// Streaming commands (none yet) would send several replies with the same id.
public enum ControlProtocol {
    public static let version = 1
    /// Longest accepted request line, newline excluded.
    public static let maxRequestBytes = 64 * 1024
    public static let defaultSocketPath = "/run/operandod/control.sock"
    public static let socketEnvironmentVariable = "OPERANDO_SOCKET"
}

public struct ControlRequest: Codable, Sendable {
    public var v: Int?
    public var id: JSONValue?
    public var cmd: String
    public var args: [String: JSONValue]?

    public init(id: JSONValue?, cmd: String, args: [String: JSONValue] = [:]) {
        self.v = ControlProtocol.version
        self.id = id
        self.cmd = cmd
        self.args = args
    }
}

/// Error codes a reply may carry.
public enum ControlErrorCode: String, Codable, Sendable {
    /// The line is not JSON, or not a JSON object.
    case badJSON = "bad_json"
    /// JSON, but not a request (no `cmd`, wrong types).
    case badRequest = "bad_request"
    /// The line exceeds `maxRequestBytes`.
    case tooLarge = "too_large"
    case unsupportedVersion = "unsupported_version"
    case unknownCommand = "unknown_command"
    /// An argument is missing or has the wrong type or value.
    case badArguments = "bad_arguments"
    case notFound = "not_found"
    /// The daemon's state does not allow this now (e.g. a run is already recording).
    case conflict
    /// The command was valid but failed (I/O error, device error).
    case failed
    case internalError = "internal"
}

public struct ControlError: Error, Codable, Sendable, CustomStringConvertible {
    public var code: ControlErrorCode
    public var message: String
    public init(_ code: ControlErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "\(message) [\(code.rawValue)]" }
}

public struct ControlReply: Codable, Sendable {
    public var v: Int
    public var id: JSONValue?
    public var ok: Bool
    public var result: JSONValue?
    public var error: ControlError?

    public static func success(id: JSONValue?, _ result: JSONValue) -> ControlReply {
        ControlReply(v: ControlProtocol.version, id: id, ok: true, result: result, error: nil)
    }

    public static func failure(id: JSONValue?, _ error: ControlError) -> ControlReply {
        ControlReply(v: ControlProtocol.version, id: id, ok: false, result: nil, error: error)
    }

    /// One line of JSON, newline included.
    public func encodedLine() -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding these plain values cannot fail; if it ever did, say so rather than send nothing.
        let data = (try? encoder.encode(self)) ?? Data(#"{"v":1,"ok":false,"error":{"code":"internal","message":"reply could not be encoded"}}"#.utf8)
        return Array(data) + [0x0A]
    }
}

/// A request line that cannot be served, with the reply to send for it.
public struct RequestRejection: Error, Sendable {
    public var id: JSONValue?
    public var error: ControlError
    public var reply: ControlReply { .failure(id: id, error) }
}

/// Parses one request line, or says why it is not a request.
public func parseRequest(_ line: [UInt8]) -> Result<ControlRequest, RequestRejection> {
    guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(line)) else {
        return .failure(RequestRejection(id: nil, error: ControlError(.badJSON, "the request is not valid JSON; send one JSON object per line, e.g. {\"id\":1,\"cmd\":\"status\"}")))
    }
    guard case .object(let object) = json else {
        return .failure(RequestRejection(id: nil, error: ControlError(.badJSON, "the request must be a JSON object, got \(json)")))
    }
    let id = object["id"]
    if let v = object["v"] {
        guard case .number(let n) = v, n == Double(ControlProtocol.version) else {
            return .failure(RequestRejection(id: id, error: ControlError(.unsupportedVersion, "protocol version \(v) is not supported; this daemon speaks v\(ControlProtocol.version)")))
        }
    }
    guard case .string(let cmd)? = object["cmd"] else {
        return .failure(RequestRejection(id: id, error: ControlError(.badRequest, "the request has no string \"cmd\"; e.g. {\"id\":1,\"cmd\":\"status\"}")))
    }
    var args: [String: JSONValue] = [:]
    switch object["args"] {
    case nil, .null?: break
    case .object(let a)?: args = a
    case let other?: return .failure(RequestRejection(id: id, error: ControlError(.badRequest, "\"args\" must be an object, got \(other)")))
    }
    var request = ControlRequest(id: id, cmd: cmd, args: args)
    request.v = ControlProtocol.version
    return .success(request)
}

/// Splits a byte stream into lines, independently of how reads cut it. A line longer than the
/// limit yields one `.tooLong` and is skipped up to its newline, so the connection stays usable.
public struct LineFramer: Sendable {
    public enum Item: Equatable, Sendable {
        case line([UInt8])
        case tooLong(Int)
    }

    public let maxLineBytes: Int
    private var buffer: [UInt8] = []
    private var discarding = false
    private var discarded = 0

    public init(maxLineBytes: Int = ControlProtocol.maxRequestBytes) { self.maxLineBytes = maxLineBytes }

    public mutating func feed(_ bytes: some Collection<UInt8>) -> [Item] {
        var items: [Item] = []
        for byte in bytes {
            if byte == 0x0A {
                if discarding {
                    items.append(.tooLong(discarded))
                    discarding = false
                    discarded = 0
                } else {
                    if buffer.last == 0x0D { buffer.removeLast() }
                    if !buffer.isEmpty { items.append(.line(buffer)) }
                }
                buffer.removeAll(keepingCapacity: true)
            } else if discarding {
                discarded += 1
            } else {
                buffer.append(byte)
                if buffer.count > maxLineBytes {
                    discarding = true
                    discarded = buffer.count
                    buffer.removeAll()
                }
            }
        }
        return items
    }

    /// Bytes held of an unfinished line.
    public var pendingBytes: Int { discarding ? discarded : buffer.count }
}

extension JSONValue {
    /// Converts any Encodable to a JSON value (for command results).
    public init(encoding value: some Encodable) throws {
        let data = try JSONEncoder().encode(value)
        self = try JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Decodes this value as `T` (for clients reading results).
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: JSONEncoder().encode(self))
    }
}
