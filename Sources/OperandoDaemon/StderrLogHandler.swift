import Foundation
import Logging
import Synchronization

/// Logs one line per message on stderr. Under systemd (JOURNAL_STREAM set) each line starts with
/// the syslog priority (`<3>` … `<7>`, see sd-daemon(3)) so journald files it at the right level
/// and adds its own timestamp; elsewhere lines start with an ISO 8601 time.
public struct StderrLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let journal: Bool
    private static let lock = Mutex<Void>(())

    public init(label: String, level: Logger.Level, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.label = label
        self.logLevel = level
        journal = environment["JOURNAL_STREAM"] != nil
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let m = event.metadata { merged.merge(m) { $1 } }
        let meta = merged.isEmpty ? "" : " " + merged.keys.sorted().map { "\($0)=\(merged[$0]!)" }.joined(separator: " ")
        let head: String
        if journal {
            head = "<\(Self.priority(event.level))>"
        } else {
            head = Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true)) + " \(event.level.rawValue.uppercased()) "
        }
        let text = "\(head)\(label):\(meta) \(event.message)\n"
        Self.lock.withLock { _ in FileHandle.standardError.write(Data(text.utf8)) }
    }

    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}
