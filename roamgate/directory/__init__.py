"""The corporate directory (LDAP): password checks, group access, attributes and user sync."""
