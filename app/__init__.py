"""HH-VAEM serving application: settings, inference engine, routes, storage."""
