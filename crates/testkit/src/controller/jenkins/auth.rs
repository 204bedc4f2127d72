//! Users, API tokens and permissions, as Jenkins checks them over HTTP.
//!
//! Permission ids and their `impliedBy` chains are read from core:
//! `hudson/security/Permission.java` (the generic ones),
//! `jenkins/model/Jenkins.java` (`READ`, `ADMINISTER`),
//! `hudson/model/Item.java` and `hudson/model/Computer.java`. A user holding
//! a permission also holds every permission it implies, and a 403 names the
//! missing permission and its chain (`AccessDeniedException3.reportAsHeaders`).
//!
//! Assumptions: permissions are global (one matrix for the whole controller,
//! no per-job or per-node ACL); only API tokens authenticate (no passwords,
//! so no crumbs); without any configured user the controller runs unsecured
//! (everyone, anonymous included, may do everything), as Jenkins with
//! security disabled.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;

/// A Jenkins permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Overall/Administer: implies everything.
    Administer,
    /// Overall/Read.
    OverallRead,
    /// `Permission.READ` (generic).
    GenericRead,
    /// `Permission.WRITE` (generic).
    GenericWrite,
    /// `Permission.CREATE` (generic).
    GenericCreate,
    /// `Permission.UPDATE` (generic).
    GenericUpdate,
    /// `Permission.DELETE` (generic).
    GenericDelete,
    /// `Permission.CONFIGURE` (generic).
    GenericConfigure,
    /// Job/Read: see queue items and running builds.
    JobRead,
    /// Job/Build.
    JobBuild,
    /// Job/Cancel: cancel queue items.
    JobCancel,
    /// Agent/Create.
    ComputerCreate,
    /// Agent/Delete.
    ComputerDelete,
    /// Agent/Configure.
    ComputerConfigure,
    /// Agent/ExtendedRead.
    ComputerExtendedRead,
    /// Agent/Connect: read the JNLP file (the secret), bring a node back online.
    ComputerConnect,
    /// Agent/Disconnect: take a node temporarily offline.
    ComputerDisconnect,
    /// Agent/Build.
    ComputerBuild,
}

impl Permission {
    /// The id Jenkins prints in `X-Required-Permission`.
    pub fn id(self) -> &'static str {
        match self {
            Permission::Administer => "hudson.model.Hudson.Administer",
            Permission::OverallRead => "hudson.model.Hudson.Read",
            Permission::GenericRead => "hudson.security.Permission.GenericRead",
            Permission::GenericWrite => "hudson.security.Permission.GenericWrite",
            Permission::GenericCreate => "hudson.security.Permission.GenericCreate",
            Permission::GenericUpdate => "hudson.security.Permission.GenericUpdate",
            Permission::GenericDelete => "hudson.security.Permission.GenericDelete",
            Permission::GenericConfigure => "hudson.security.Permission.GenericConfigure",
            Permission::JobRead => "hudson.model.Item.Read",
            Permission::JobBuild => "hudson.model.Item.Build",
            Permission::JobCancel => "hudson.model.Item.Cancel",
            Permission::ComputerCreate => "hudson.model.Computer.Create",
            Permission::ComputerDelete => "hudson.model.Computer.Delete",
            Permission::ComputerConfigure => "hudson.model.Computer.Configure",
            Permission::ComputerExtendedRead => "hudson.model.Computer.ExtendedRead",
            Permission::ComputerConnect => "hudson.model.Computer.Connect",
            Permission::ComputerDisconnect => "hudson.model.Computer.Disconnect",
            Permission::ComputerBuild => "hudson.model.Computer.Build",
        }
    }

    /// The permission that implies this one (`Permission.impliedBy`).
    pub fn implied_by(self) -> Option<Permission> {
        use Permission::*;
        match self {
            Administer => None,
            GenericRead | GenericWrite => Some(Administer),
            GenericCreate | GenericUpdate | GenericDelete => Some(GenericWrite),
            GenericConfigure => Some(GenericUpdate),
            OverallRead | JobRead => Some(GenericRead),
            JobBuild | JobCancel => Some(GenericUpdate),
            ComputerCreate => Some(GenericCreate),
            ComputerDelete => Some(GenericDelete),
            ComputerConfigure => Some(GenericConfigure),
            ComputerExtendedRead => Some(ComputerConfigure),
            ComputerDisconnect => Some(Administer),
            ComputerConnect => Some(ComputerDisconnect),
            ComputerBuild => Some(GenericWrite),
        }
    }

    /// Every permission a lender needs (a convenient grant for tests).
    pub const LENDER: &'static [Permission] = &[
        Permission::OverallRead,
        Permission::JobRead,
        Permission::ComputerCreate,
        Permission::ComputerDelete,
        Permission::ComputerConfigure,
        Permission::ComputerConnect,
        Permission::ComputerDisconnect,
    ];
}

/// Who a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A user whose API token matched.
    User(String),
}

impl Caller {
    pub(crate) fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User(name) => name,
        }
    }
}

/// A configured user.
#[derive(Debug, Clone)]
struct UserSpec {
    token: String,
    granted: BTreeSet<Permission>,
}

/// The security realm and the authorization matrix.
#[derive(Debug, Clone, Default)]
pub(crate) struct Security {
    users: BTreeMap<String, UserSpec>,
    anonymous: BTreeSet<Permission>,
}

/// The outcome of reading `Authorization`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Authn {
    Ok(Caller),
    /// Bad credentials: 401 with `WWW-Authenticate: Basic realm="Jenkins"`.
    Invalid,
}

impl Security {
    /// Adds a user with an API token and global permissions.
    pub(crate) fn add_user(&mut self, name: &str, token: &str, granted: &[Permission]) {
        self.users.insert(
            name.to_owned(),
            UserSpec {
                token: token.to_owned(),
                granted: granted.iter().copied().collect(),
            },
        );
    }

    pub(crate) fn set_anonymous(&mut self, granted: &[Permission]) {
        self.anonymous = granted.iter().copied().collect();
    }

    /// Replaces a user's permissions; false if there is no such user.
    pub(crate) fn grant(&mut self, name: &str, granted: &[Permission]) -> bool {
        match self.users.get_mut(name) {
            Some(user) => {
                user.granted = granted.iter().copied().collect();
                true
            }
            None => false,
        }
    }

    /// Whether security is on (some user configured).
    pub(crate) fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Reads an `Authorization` header value (`None`: none sent).
    pub(crate) fn authenticate(&self, header: Option<&[u8]>) -> Authn {
        let Some(header) = header else {
            return Authn::Ok(Caller::Anonymous);
        };
        let Some(encoded) = header
            .strip_prefix(b"Basic ")
            .or_else(|| header.strip_prefix(b"basic "))
        else {
            // Other schemes are not Jenkins' business: anonymous.
            return Authn::Ok(Caller::Anonymous);
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .ok()
            .and_then(|raw| String::from_utf8(raw).ok());
        let Some((user, token)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Authn::Invalid;
        };
        match self.users.get(user) {
            Some(spec) if constant_time_eq(spec.token.as_bytes(), token.as_bytes()) => {
                Authn::Ok(Caller::User(user.to_owned()))
            }
            _ => Authn::Invalid,
        }
    }

    /// Whether `caller` holds `permission` (directly or through its chain).
    pub(crate) fn has(&self, caller: &Caller, permission: Permission) -> bool {
        if !self.enabled() {
            return true;
        }
        let granted = match caller {
            Caller::Anonymous => &self.anonymous,
            Caller::User(name) => match self.users.get(name) {
                Some(user) => &user.granted,
                None => return false,
            },
        };
        let mut p = Some(permission);
        while let Some(each) = p {
            if granted.contains(&each) {
                return true;
            }
            p = each.implied_by();
        }
        false
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, token: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        )
        .into_bytes()
    }

    #[test]
    fn tokens_and_implied_permissions() {
        let mut security = Security::default();
        assert!(
            security.has(&Caller::Anonymous, Permission::Administer),
            "unsecured"
        );
        security.add_user(
            "lender",
            "t0k",
            &[Permission::OverallRead, Permission::ComputerConnect],
        );
        security.add_user("admin", "adm", &[Permission::Administer]);
        let lender = Caller::User("lender".into());
        assert_eq!(
            security.authenticate(Some(&basic("lender", "t0k"))),
            Authn::Ok(lender.clone())
        );
        assert_eq!(
            security.authenticate(Some(&basic("lender", "nope"))),
            Authn::Invalid
        );
        assert_eq!(
            security.authenticate(Some(&basic("ghost", "t0k"))),
            Authn::Invalid
        );
        assert_eq!(security.authenticate(Some(b"Basic !!!")), Authn::Invalid);
        assert_eq!(security.authenticate(None), Authn::Ok(Caller::Anonymous));
        assert!(security.has(&lender, Permission::OverallRead));
        assert!(
            !security.has(&lender, Permission::ComputerDisconnect),
            "Disconnect implies Connect, not the reverse"
        );
        assert!(!security.has(&lender, Permission::ComputerCreate));
        assert!(!security.has(&Caller::Anonymous, Permission::OverallRead));
        let admin = Caller::User("admin".into());
        assert!(security.has(&admin, Permission::ComputerConnect));
        assert!(security.has(&admin, Permission::JobCancel));
    }
}
