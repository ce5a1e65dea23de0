// Azure Machine Learning: workspace + its Key Vault (RBAC, purge protection) and storage, and the
// two clusters of the article (GPU head, CPU workers) inside the aml subnet. Creating the clusters
// here means the function app only reuses them; it creates clusters itself only for the custom
// names a request may carry (and only with allowClusterCreation in main.bicep).

@description('Azure region.')
param location string

@description('Workspace name.')
param workspaceName string

@description('Key Vault name (3-24 characters, globally unique).')
param keyVaultName string

@description('Storage account of the workspace (run snapshots, logs, outputs, checkpoints).')
param storageName string

@description('Application Insights resource id.')
param appInsightsId string

@description('Subnet of the clusters.')
param amlSubnetId string

@description('Subnets allowed through the Key Vault firewall.')
param allowedSubnetIds array

@description('Public IP ranges allowed through the Key Vault firewall, CIDR.')
param allowedIpRanges array = []

@description('Create the default head and worker clusters.')
param createClusters bool = true

param headClusterName string = 'head-gpu'
param headVmSize string = 'Standard_NC4as_T4_v3'
param headMaxNodes int = 1
param workerClusterName string = 'worker-cpu'
param workerVmSize string = 'Standard_D2as_v5'
param workerMaxNodes int = 4

@description('Webhook signing secret(s) (whsec_..., space separated); empty: none stored.')
@secure()
param webhookSecrets string = ''

@description('Key that signs the dashboard\'s form tokens (RLQ_CSRF_SECRET): stored in the vault, read by the function app through a Key Vault reference.')
@secure()
param csrfSecret string

@description('Expiry of the stored secret (epoch seconds).')
param secretExpiry int = dateTimeToEpoch(dateTimeAdd(utcNow(), 'P1Y'))

@description('The clusters\' nodes get public IPs. Default: none; the nodes reach Azure ML through the workspace private endpoint (modules/workspace-endpoint.bicep) and leave through the subnet\'s NAT gateway.')
param nodePublicIp bool = false

@description('Virtual network of the aml subnet (the private endpoint\'s DNS zones are linked to it).')
param vnetId string

@description('Container registry resource id (modules/registry.bicep): the environment image is built and kept there.')
param containerRegistryId string

@description('Ray token the cluster nodes share (SDK v2 backend): stored in the vault, read there by the nodes with their managed identity.')
@secure()
@minLength(32)
param rayAuthToken string

@description('Tags for every resource.')
param tags object = {}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enablePurgeProtection: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [for id in allowedSubnetIds: {
        id: id
        ignoreMissingVnetServiceEndpoint: false
      }]
      ipRules: [for ip in allowedIpRanges: {
        value: ip
      }]
    }
  }
}

var webhookSecretName = 'rlq-webhook-secrets'

resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(webhookSecrets)) {
  parent: vault
  name: webhookSecretName
  properties: {
    value: webhookSecrets
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

var csrfSecretName = 'rlq-csrf-secret'

resource csrfSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: csrfSecretName
  properties: {
    value: csrfSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

// Azure ML reaches its datastores and run snapshots with account keys and SAS it issues, so this
// account keeps shared-key access (the function app's own account does not).
resource mlStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: true
    publicNetworkAccess: 'Enabled'
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource mlBlobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: mlStorage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    keyVault: vault.id
    storageAccount: mlStorage.id
    applicationInsights: appInsightsId
    containerRegistry: containerRegistryId
    publicNetworkAccess: 'Enabled'
  }
}

// No-public-IP clusters talk to Azure ML through a workspace private endpoint; created before them.
module workspaceEndpoint 'workspace-endpoint.bicep' = if (!nodePublicIp) {
  name: 'workspace-endpoint'
  params: {
    location: location
    workspaceName: workspace.name
    vnetId: vnetId
    subnetId: amlSubnetId
    tags: tags
  }
}

resource headCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = if (createClusters) {
  parent: workspace
  dependsOn: [
    workspaceEndpoint
  ]
  name: headClusterName
  location: location
  // pulls the environment image from the registry: Azure ML grants this identity AcrPull
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'Ray head: trains the network (GPU)'
    properties: {
      vmSize: headVmSize
      vmPriority: 'Dedicated'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: headMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT30M'
      }
      subnet: {
        id: amlSubnetId
      }
      remoteLoginPortPublicAccess: 'Disabled'
      enableNodePublicIp: nodePublicIp
    }
  }
}

resource workerCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = if (createClusters) {
  parent: workspace
  dependsOn: [
    workspaceEndpoint
  ]
  name: workerClusterName
  location: location
  // pulls the environment image from the registry: Azure ML grants this identity AcrPull
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'Ray workers: run the game simulations (CPU)'
    properties: {
      vmSize: workerVmSize
      vmPriority: 'Dedicated'
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: workerMaxNodes
        nodeIdleTimeBeforeScaleDown: 'PT30M'
      }
      subnet: {
        id: amlSubnetId
      }
      remoteLoginPortPublicAccess: 'Disabled'
      enableNodePublicIp: nodePublicIp
    }
  }
}

// The Ray token of the SDK v2 backend's clusters (trainer/bootstrap.py reads it on each node with
// the node's managed identity; the jobs carry only the vault URI and this secret's name).
var rayTokenSecretName = 'rlq-ray-token'

resource rayTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: rayTokenSecretName
  properties: {
    value: rayAuthToken
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

// Key Vault Secrets User (read secret values) for each cluster's identity, on this vault only.
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource headReadsToken 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createClusters) {
  scope: vault
  name: guid(vault.id, headClusterName, keyVaultSecretsUser)
  properties: {
    principalId: createClusters ? headCluster.identity.principalId : ''
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource workersReadToken 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (createClusters) {
  scope: vault
  name: guid(vault.id, workerClusterName, keyVaultSecretsUser)
  properties: {
    principalId: createClusters ? workerCluster.identity.principalId : ''
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

output workspaceName string = workspace.name
output workspacePrincipalId string = workspace.identity.principalId
output keyVaultName string = vault.name
output keyVaultUri string = vault.properties.vaultUri
output rayTokenSecretName string = rayTokenSecretName
output webhookSecretName string = empty(webhookSecrets) ? '' : webhookSecretName
output csrfSecretName string = csrfSecretName
